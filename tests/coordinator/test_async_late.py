"""An async update that answers its task after the task's deadline is refused by name
(stale_round, the rejection metric, the device's Ack), whether or not the coordinator has
ticked since the deadline passed: the service ticks only between bursts of up to 500
messages, and a restart rebuilds flights whose deadline passed while it was down (an update
for one was buffered 400 s past its deadline, before the first tick); the device rests
`pace_declined_s` as one whose task expired does. The attacker is a raw
paho client over a real Mosquitto; the clock is the test's."""

from __future__ import annotations

import time

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.machine import Admit, Arrived, AsyncMachine, Dispatched, Flight, Reject, on_event
from fedge.coordinator.async_mode.server import AsyncCoordinator
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import Ack, CheckIn, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.coordinator.fleet import make_fleet, random_delta
from tests.coordinator.mqtt_attackers import SecuredConnector, exported_rejections, open_broker, pump_until, wait_for
from tests.tiny_model import build_tiny_model

DEADLINE_S = 100.0


def test_the_machine_refuses_an_answer_at_or_past_its_deadline_and_retires_the_flight():
    m = AsyncMachine(version=0, buffer_size=3, concurrency=2, max_staleness=1)
    m, _ = on_event(m, Dispatched("a", Flight("ta", 1, 0, deadline=DEADLINE_S)))
    for now in (0.0, DEADLINE_S - 1e-6):  # the oracle: late means deadline <= now, as Tick expires
        assert on_event(m, Arrived("a", "ta", now)) == (m, [Admit("a", 0)])
    for now in (DEADLINE_S, DEADLINE_S + 400.0):
        after, actions = on_event(m, Arrived("a", "ta", now))
        assert [(type(a), a.reason, a.retired) for a in actions] == [(Reject, "stale_round", "ta")]
        assert after.flight("a") is None and after.in_flight == 0


@pytest.mark.mosquitto
def test_an_update_past_its_deadline_is_refused_before_a_tick_and_after_a_restart(mosquitto, tmp_path):
    model = build_tiny_model(tmp_path / "artifacts")
    broker = SecuredConnector(open_broker(mosquitto))
    fleet = make_fleet(model, tmp_path, store=RoundStore(tmp_path / "state.db"), broker=broker, mode="async",
                       round_deadline_s=DEADLINE_S, async_=AsyncConfig(concurrency=2, buffer_size=2, max_staleness=5))
    c, clock = fleet.coordinator, fleet.clock
    try:
        heard: list = []
        pi_x = broker.raw("pi-x")
        pi_x.on_message = lambda _c, _u, msg: heard.append(decode_message(msg.payload))
        for channel in ("task", "ack"):
            pi_x.subscribe(device_topic("pi-x", channel), qos=1)
        time.sleep(0.2)  # the SUBACKs

        def send(payload: bytes, channel: str = "update") -> None:
            pi_x.publish(device_topic("pi-x", channel), payload, qos=1).wait_for_publish(5)

        def acks() -> list[tuple[str, bool, str]]:
            return [(m.update_id, m.accepted, m.reason) for m in heard if isinstance(m, Ack)]

        def answer(task: TrainTask, update_id: str) -> Update:
            return Update("pi-x", task.round_id, task.task_id, update_id, task.model_id, task.model_version, 5,
                          encode_dense(random_delta(c.shapes, np.random.default_rng(len(update_id)))))

        send(encode_message(CheckIn("pi-x", num_examples=5)), "checkin")
        pump_until(c, lambda: "pi-x" in c.registry)
        assert c.begin_round()
        c.tick()
        wait_for(lambda: any(isinstance(m, TrainTask) for m in heard), "pi-x's first task")
        first = [m for m in heard if isinstance(m, TrainTask)][-1]
        clock.advance(DEADLINE_S)  # its deadline, no tick since
        send(encode_message(answer(first, "late")))
        pump_until(c, lambda: len(acks()) == 1, 10.0)  # refused or not, it is acked
        assert acks() == [("late", False, "stale_round")]
        assert c.machine.buffered == 0 and c.machine.flight("pi-x") is None
        assert c.journal.tasks() == []  # retired with its flight: a restart does not bring it back

        late_at = clock.now()
        assert c._rest == {"pi-x": late_at + c.config.pace_declined_s}  # rests, as if its task had expired
        c.tick()
        assert c.machine.flight("pi-x") is None
        clock.advance(c.config.pace_declined_s)
        c.tick()  # a second task, on the same version
        wait_for(lambda: sum(isinstance(m, TrainTask) for m in heard) == 2, "pi-x's second task")
        second = [m for m in heard if isinstance(m, TrainTask)][-1]
        assert [t.task_id for t in c.journal.tasks()] == [second.task_id]
        c.transport.close()
        clock.advance(5 * DEADLINE_S)  # down for longer than the task had left
        c = AsyncCoordinator(broker.connect("coordinator-2"), make_strategy("fedavg", c.config.hyper), model[1],
                             model[2].initial("shared"), c.config, clock=clock, store=RoundStore(tmp_path / "state.db"))
        c.start()
        assert c.machine.flight("pi-x").task_id == second.task_id  # rebuilt from the journal, past its deadline
        send(encode_message(answer(second, "after-restart")))
        pump_until(c, lambda: len(acks()) == 2, 10.0)
        assert acks()[-1] == ("after-restart", False, "stale_round")
        assert c.rejections == {"stale_round": 1} and exported_rejections(c) == {"stale_round": 1}
        assert c.machine.buffered == 0 and c.round.aggregator.count == 0 and c.journal.tasks() == []
    finally:
        broker.close()
