"""The round's state machine attacked by a device client that is buggy or malicious: messages
that are well formed and valid on their own, sent at the wrong time. It controls only its own
device id (the broker's ACL), so it replays its own earlier messages, answers tasks it was never
sent, answers twice, declines after answering, names models never published, and checks in a
thousand times a second. Each such message is refused by name (exported by reason and logged),
nothing is counted twice, no honest device is parked or passed over, and the round commits to
the plain mean of the honest devices' deltas (the oracle, computed here from the arrays sent).
The secure and the async rounds have their own files (test_phase_fuzz_secagg.py, _async.py), and
what the broker decides its own (test_phase_fuzz_mqtt.py)."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter

import numpy as np
import pytest

from fedge.coordinator import backoff, pace
from fedge.coordinator.evaluation import EvalConfig
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, Decline, EvalReport, EvalTask, FetchRequest, Status, Update
from fedge.edge_runtime.kernel.secagg.messages import EncryptedShares, KeyAdvertisement, MaskedInput, UnmaskResponse
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.coordinator.fleet import ManualDevice, assert_params, copy_params, make_fleet, random_delta
from tests.coordinator.hostile import CODES, as_map, named_reasons, raw_frame
from tests.coordinator.phase_attack import capture, exported, judged, plain_mean, refused
from tests.tiny_model import build_tiny_model

HONEST = ("h0", "h1", "h2")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fleet(model, tmp_path, names, **config):
    settings = dict(clients_per_round=len(names), min_reports=len(HONEST), weighting="equal",
                    abandon_backoff_s=0.0, **config)
    fleet = make_fleet(model, tmp_path, store=RoundStore(tmp_path / "state.db"), **settings)
    devices = {name: ManualDevice(fleet, name, 5 + i) for i, name in enumerate(names)}
    fleet.drain()
    return fleet, devices


def _shapes(fleet):
    return {k: v.shape for k, v in fleet.coordinator.state.params.items()}


def _honest_round(fleet, devices, rng):
    """Begin a round; every honest device sends one update; returns their deltas (to the oracle)."""
    assert fleet.coordinator.begin_round()
    fleet.drain()
    return _answer(fleet, devices, rng)


def _answer(fleet, devices, rng):
    """Every honest device answers its task with one update; returns their deltas."""
    deltas = []
    for name in HONEST:
        delta = random_delta(_shapes(fleet), rng)
        devices[name].send(encode_message(devices[name].update(delta, update_id=uuid.uuid4().hex)))
        deltas.append(delta)
    fleet.drain()
    return deltas


def _commit(fleet, old, deltas):
    """Close the round at its deadline; it commits the plain mean of `deltas` and nothing else."""
    c = fleet.coordinator
    fleet.clock.advance(c.config.round_deadline_s + 1)
    record = c.tick()
    assert record is not None and record.committed, record
    assert record.reports == len(deltas)
    assert_params(c.state.params, plain_mean(old, deltas))
    return record


def _honest_untouched(fleet, devices):
    c = fleet.coordinator
    for name in HONEST:
        assert devices[name].acks() and all(a == (True, "") for a in devices[name].acks()), name
        assert c.registry[name].eligible and not c.registry[name].parked, name
    assert set(HONEST) <= set(c.eligible_devices())


def _with_x(model, tmp_path, caplog, seed):
    """The honest devices and x, a round begun and answered by the honest ones: (fleet, devices,
    x, rng, the params before the round, the honest deltas)."""
    capture(caplog)
    fleet, devices = _fleet(model, tmp_path, HONEST + ("x",))
    rng = np.random.default_rng(seed)
    old = copy_params(fleet.coordinator.state.params)
    return fleet, devices, devices["x"], rng, old, _honest_round(fleet, devices, rng)


def test_an_attacker_in_the_round_replays_misaddresses_and_declines_twice(model, tmp_path, caplog):
    # Round 1: x takes part honestly, so it holds a counted update, a task and a version to replay.
    fleet, devices, x, rng, old, deltas = _with_x(model, tmp_path, caplog, 7)
    c = fleet.coordinator
    x_delta = random_delta(_shapes(fleet), rng)
    first = x.update(x_delta, update_id="x1")
    x.send(encode_message(first))
    fleet.drain()
    old_task = x.task()
    _commit(fleet, old, deltas + [x_delta])

    old = copy_params(c.state.params)
    deltas = _honest_round(fleet, devices, rng)
    task = x.task()
    assert task.round_id == old_task.round_id + 1 and task.model_version == old_task.model_version + 1
    delta = random_delta(_shapes(fleet), rng)
    keys = (b"k" * 32, b"m" * 32, "ab" * 32)
    attacks = [  # (message, channel, rejection)
        (first, "update", "duplicate"),  # the closed round's update again: counted there, once
        (dataclasses.replace(first, round_id=task.round_id), "update", "stale_round"),
        (dataclasses.replace(first, round_id=task.round_id, task_id=task.task_id), "update", "wrong_model"),
        (x.update(delta, update_id="m", model_id="never-published"), "update", "wrong_model"),
        (x.update(delta, update_id="v", base_version=task.model_version + 5), "update", "wrong_model"),
        (x.update(delta, update_id="o", base_version=task.model_version - 1), "update", "wrong_model"),
        (x.update(delta, update_id="t", task_id=uuid.uuid4().hex), "update", "stale_round"),
        (x.update(delta, update_id="h", device_id="h0", task_id=task.task_id), "update", "stale_round"),
        (Decline("x", old_task.round_id, old_task.task_id, "battery_low"), "update", "stale_round"),
        (Decline("x", task.round_id, uuid.uuid4().hex, "battery_low"), "update", "stale_round"),
        (Decline("x", task.round_id + 1, task.task_id, "battery_low"), "update", "stale_round"),
        (EvalReport("x", "never-asked", task.model_version, 9, True, 0.5, 0.5), "update", "stale_eval"),
        (KeyAdvertisement("x", task.round_id, task.task_id, *keys), "update", "unexpected_message"),
        (EncryptedShares("x", task.round_id, task.task_id, b""), "update", "unexpected_message"),
        (MaskedInput("x", task.round_id, task.task_id, 1, 16, b"\0\0", 9), "update", "unexpected_message"),
        (UnmaskResponse("x", task.round_id, task.task_id, b""), "update", "unexpected_message"),
        (CheckIn("x", num_examples=9), "update", "unexpected_message"),
        (x.update(delta, update_id="c"), "checkin", "unexpected_message"),
        (Status("x", False), "update", "unexpected_message"),
        (FetchRequest("x", task.model_id, task_id=old_task.task_id), "fetch", "unknown_task"),
    ]
    for message, channel, reason in attacks:
        refused(fleet, caplog, x, message, reason, channel)
    # every Update for x's own id is answered (the one naming h0 is not: nothing in it can be x's)
    assert x.acks()[1:] == [(True, "duplicate"), (False, "stale_round")] + [(False, "wrong_model")] * 4 + [
        (False, "stale_round")]
    assert c.round.machine.reported == list(HONEST) and c.round.machine.expects("x")

    # x declines its task: counted once. Its decline again, another reason, and then an update for
    # the task it declined are refused by name; none changes the round or x's standing.
    x.send(encode_message(Decline("x", task.round_id, task.task_id, "battery_low")))
    fleet.drain()
    assert c.declines == Counter({"battery_low": 1}) and x.paces()[-1].reason == pace.DECLINED
    refused(fleet, caplog, x, Decline("x", task.round_id, task.task_id, "battery_low"), "duplicate")
    refused(fleet, caplog, x, Decline("x", task.round_id, task.task_id, "bad_dataset"), "duplicate")
    refused(fleet, caplog, x, x.update(delta, update_id="late"), "stale_round")
    assert c.declines == Counter({"battery_low": 1}) and not c.registry["x"].parked
    record = _commit(fleet, old, deltas)
    assert record.declines == {"x": "battery_low"}
    _honest_untouched(fleet, devices)
    assert not any(r.startswith("internal") for r in c.rejections)
    assert set(c.rejections) <= named_reasons()


def test_an_attacker_that_answers_then_answers_again_or_declines_is_counted_once(model, tmp_path, caplog):
    fleet, devices, x, rng, old, deltas = _with_x(model, tmp_path, caplog, 8)
    c = fleet.coordinator
    x_delta = random_delta(_shapes(fleet), rng)
    update = x.update(x_delta, update_id="x1")
    assert judged(fleet, caplog, x, update) == Counter()
    assert x.acks() == [(True, "")]
    other = x.update(random_delta(_shapes(fleet), rng), update_id="x1")
    refused(fleet, caplog, x, update, "duplicate")  # identical bytes: acked as in, not counted again
    refused(fleet, caplog, x, other, "conflicting_duplicate")  # same key, other bytes
    refused(fleet, caplog, x, dataclasses.replace(other, update_id="x2"), "stale_round")  # one update per task
    task = x.task()
    for reason in ("battery_low", "bad_dataset"):  # a decline of a task it answered: its update stands
        refused(fleet, caplog, x, Decline("x", task.round_id, task.task_id, reason), "stale_round")
    assert x.acks() == [(True, ""), (True, "duplicate"), (False, "conflicting_duplicate"), (False, "stale_round")]
    assert not c.declines and not c.registry["x"].parked
    assert c.round.machine.reported == list(HONEST) + ["x"]
    record = _commit(fleet, old, deltas + [x_delta])
    assert record.declines == {}
    _honest_untouched(fleet, devices)


def test_a_device_never_selected_cannot_answer_or_decline_a_task(model, tmp_path, caplog):
    capture(caplog)
    fleet, devices = _fleet(model, tmp_path, HONEST)
    c, rng = fleet.coordinator, np.random.default_rng(9)
    old = copy_params(c.state.params)
    assert c.begin_round()
    fleet.drain()
    o = ManualDevice(fleet, "o", 11)  # checks in after the round began: not selected
    fleet.drain()
    assert o.paces()[-1].reason == pace.NOT_SELECTED
    task = devices["h0"].task()  # what o might guess: the round, the model, even another's task id
    forged = dict(device_id="o", round_id=task.round_id, task_id=task.task_id, update_id="o1",
                  model_id=task.model_id, base_version=task.model_version, num_examples=11)
    update = Update(**forged, payload=encode_dense(random_delta(_shapes(fleet), rng)))
    refused(fleet, caplog, o, update, "stale_round")
    refused(fleet, caplog, o, dataclasses.replace(update, task_id=uuid.uuid4().hex), "stale_round")
    refused(fleet, caplog, o, Decline("o", task.round_id, task.task_id, "battery_low"), "stale_round")
    refused(fleet, caplog, o, FetchRequest("o", task.model_id, task_id=task.task_id), "unknown_task", "fetch")
    assert o.acks() == [(False, "stale_round")] * 2 and not c.declines
    _commit(fleet, old, _answer(fleet, devices, rng))
    _honest_untouched(fleet, devices)


def test_a_thousand_check_ins_in_a_second_with_changing_claims(model, tmp_path, caplog):
    """x, selected, checks in 1,000 times within one second, each time claiming something else
    (eligible or not, its example count, reason, backends, models). Past its bucket each is refused
    as checkin_too_often, with no store write and no reply; x's task is not lost (a check-in of a
    selected device gets the task again, at most once per task_resend_s), the honest round commits."""
    capture(caplog)
    fleet, devices = _fleet(model, tmp_path, HONEST + ("x",))
    c, x, rng = fleet.coordinator, devices["x"], np.random.default_rng(10)
    store_writes = []
    real_save = c.store.save_device
    c.store.save_device = lambda device: (store_writes.append(device), real_save(device))[1]
    old = copy_params(c.state.params)
    assert c.begin_round()
    fleet.drain()
    x.receive()
    inbox_before = len(x.inbox)
    storm = 1000
    for i in range(storm):
        fleet.clock.advance(1.0 / storm)
        claim = CheckIn("x", backends=(f"b{i % 7}",), model_ids=(f"m{i % 5}",), eligible=bool(i % 2),
                        reason=("", "battery_low", "too_hot", "bad_dataset")[i % 4],
                        num_examples=int(rng.integers(2**32)))
        x.send(encode_message(claim), channel="checkin")
    fleet.drain()
    cfg = c.config
    passed = storm - c.rejections["checkin_too_often"]
    # the oracle: a token bucket of checkin_burst, less the one check-in x made when it joined,
    # refilled by one per checkin_refill_s over the storm's one second
    assert cfg.checkin_burst - 1 <= passed <= cfg.checkin_burst - 1 + int(1.0 / cfg.checkin_refill_s)
    assert len(store_writes) <= passed
    assert set(c.rejections) == {"checkin_too_often"}
    assert exported(c, "checkin_too_often") == storm - passed
    x.receive()
    replies = len(x.inbox) - inbox_before
    assert replies <= passed  # a refused check-in gets no reply
    assert c.round.machine.expects("x") and c.registry["x"].parked == ""
    deltas = _answer(fleet, devices, rng)
    _commit(fleet, old, deltas)
    _honest_untouched(fleet, devices)


DEVICE_REASONS = sorted(named_reasons() | set(pace.RECHECK_S) | {"aborted:too_hot", "aborted:time_limit",
                                                                   "secagg_failed", "not_in_cohort"})
NOT_IN_SCHEMA = ("", "other", "reason with spaces\tand\nnewlines", "ünïcödé ☃", "x" * 256, "duplicate", "stale_round",
                 "../../etc/passwd", "internal:KeyError", "{}", "declined", "no_round")


def test_every_decline_reason_from_selected_devices_and_reasons_not_in_the_schema(model, tmp_path, caplog):
    """Selected devices decline with every reason fedge's devices use and with strings no device
    sends; a reason the codec cannot carry (over 256 characters, a NUL) is refused as malformed
    and its device still owes an answer. Each decline counts once, the decline labels stay
    bounded, only a permanent reason parks its own device, and the honest round commits."""
    capture(caplog)
    reasons = DEVICE_REASONS + list(NOT_IN_SCHEMA)
    decliners = tuple(f"d{i}" for i in range(len(reasons)))
    fleet, devices = _fleet(model, tmp_path, HONEST + decliners)
    c, rng = fleet.coordinator, np.random.default_rng(11)
    old = copy_params(c.state.params)
    assert c.begin_round()
    fleet.drain()
    for i, (name, reason) in enumerate(zip(decliners, reasons)):
        task = devices[name].task()
        for bad in ("y" * 257, "nul\0") if i < 3 else ():  # (more would pass the log's flood limit)
            frame = raw_frame(CODES[Decline], {**as_map(Decline(name, task.round_id, task.task_id, "r")),
                                               "reason": bad})
            refused(fleet, caplog, devices[name], frame, "malformed")
        assert c.round.machine.expects(name)
        decline = Decline(name, task.round_id, task.task_id, reason, "d")
        assert judged(fleet, caplog, devices[name], decline) == Counter()
        assert not c.round.machine.expects(name)
        devices[name].check_in()  # asks again, as before: not given its task back
        fleet.drain()
        parked = reason in backoff.PERMANENT_DECLINES  # then paced as not eligible until it says something new
        assert devices[name].paces()[-1].reason == (pace.INELIGIBLE if parked else pace.DECLINED), reason
    assert sum(c.declines.values()) == len(reasons)
    labels = {s.labels["reason"] for m in c.metrics.registry.collect() if m.name == "fedge_declines"
              for s in m.samples if s.name == "fedge_declines_total"}
    assert len(labels) <= 65  # 64 of the devices' choosing, then "other"
    deltas = _answer(fleet, devices, rng)
    record = _commit(fleet, old, deltas)
    assert record.declines == dict(zip(decliners, reasons))
    parked = {name for name in decliners if c.registry[name].parked}
    assert parked == {name for name, reason in zip(decliners, reasons) if reason in backoff.PERMANENT_DECLINES}
    _honest_untouched(fleet, devices)
    assert c.begin_round() and set(HONEST) <= set(c.round.machine.selected)


def _eval_task(device):
    device.receive()
    return [m for m in device.inbox if isinstance(m, EvalTask)][-1]


def test_eval_reports_for_evaluations_never_asked_older_ones_or_twice(model, tmp_path, caplog):
    """After each commit every device is asked to evaluate the new model. x answers with another
    model version, another eval id, for h0, twice (same and other numbers), and after the next
    evaluation opened, the old one's report: each is refused by name, its first report counts once,
    and the evaluation's means are the example-weighted means of the reports that counted."""
    capture(caplog)
    fleet, devices = _fleet(model, tmp_path, HONEST + ("x",), evaluation=EvalConfig(every_rounds=1, devices=0))
    c, x, rng = fleet.coordinator, devices["x"], np.random.default_rng(12)
    _honest_round(fleet, devices, rng)
    x.send(encode_message(x.update(random_delta(_shapes(fleet), rng))))
    fleet.drain()
    assert c.tick().committed
    fleet.drain()
    asked = {name: _eval_task(d) for name, d in devices.items()}
    e = asked["x"]
    mine = EvalReport("x", e.eval_id, e.model_version, 8, True, 0.25, 0.75)
    for report, reason in ((dataclasses.replace(mine, model_version=e.model_version + 1), "stale_eval"),
                           (dataclasses.replace(mine, model_version=e.model_version - 1), "stale_eval"),
                           (dataclasses.replace(mine, eval_id=uuid.uuid4().hex), "stale_eval"),
                           (dataclasses.replace(mine, eval_id=asked["h0"].eval_id), "stale_eval"),
                           (dataclasses.replace(mine, device_id="h0", eval_id=asked["h0"].eval_id), "stale_eval")):
        refused(fleet, caplog, x, report, reason)
    assert judged(fleet, caplog, x, mine) == Counter()
    refused(fleet, caplog, x, mine, "duplicate")
    refused(fleet, caplog, x, dataclasses.replace(mine, loss_global=9.0, num_examples=10**6), "duplicate")
    sent = {"x": mine}
    for i, name in enumerate(HONEST):
        sent[name] = EvalReport(name, asked[name].eval_id, asked[name].model_version, 3 + i, True, 0.5 + i, 0.1 * i)
        devices[name].send(encode_message(sent[name]))
    fleet.drain()
    (record,) = c.evaluations.history
    assert record.complete and record.reported == 4 and set(record.per_device) == set(sent)
    weights = {d: min(r.num_examples, c.config.max_examples or r.num_examples) for d, r in sent.items()}
    total = sum(weights.values())
    assert record.loss_global == pytest.approx(sum(weights[d] * r.loss_global for d, r in sent.items()) / total)
    assert record.accuracy_global == pytest.approx(sum(weights[d] * r.accuracy_global for d, r in sent.items()) / total)
    # the next commit opens the next evaluation: the old report is stale, whatever it says
    _honest_round(fleet, devices, rng)
    x.send(encode_message(x.update(random_delta(_shapes(fleet), rng), update_id="x2")))
    fleet.drain()
    assert c.tick().committed
    fleet.drain()
    assert _eval_task(x).eval_id != e.eval_id
    refused(fleet, caplog, x, mine, "stale_eval")
    refused(fleet, caplog, x, dataclasses.replace(mine, model_version=_eval_task(x).model_version), "stale_eval")
