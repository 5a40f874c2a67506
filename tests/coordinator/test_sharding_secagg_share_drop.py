"""A sharded secure round whose shard group is out at the share stage (coordinator/sharding/secure.py).

A group with fewer advertisers than max(3, its min_inputs) leaves the round, and a round with a
group out is never unmasked (unmask_refusal). The round used to run the share and mask stages on
anyway, the other groups' devices agreeing keys, masking and uploading their masked inputs for
nothing, and was abandoned only at the unmask stage, one or two stage deadlines later.

Oracles: the messages the devices received (the spy sees every task-topic message), the round's
status and record in the leader's PostgreSQL store, the clock when the round closed against the
one when the share stage opened, and the next round: a second leader started on that store after the
abandonment (as after a restart; the first is not stopped) opens it with the next id, and it commits.
"""

from __future__ import annotations

import pytest

from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.kernel.secagg.messages import KeyDirectory, SecAggTask, ShareDelivery, UnmaskRequest
from tests.coordinator.test_sharding_secagg import SECURE, SIZES, _fleet, _run_round, _shard
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402
from fedge.coordinator.sharding.leader import ShardedCoordinator  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


SILENT = ("dev4", "dev6")  # two of shard 0's four devices (dev4 .. dev7) never advertise keys
WHY = ("secure aggregation stopped at the share stage: shard group 0: 2 device(s) advertised keys, the group needs 3 "
       "(the round could not be unmasked)")


def test_a_group_out_at_the_share_stage_abandons_the_round_before_any_key_directory(model, tmp_path, postgres_dsn):
    """Shard 0's group needs 3 advertisers (max(3, ceil(8 * 4 / 12))) and gets 2; the other group's
    8 reach the round's quorum of 8, so only the group's floor stops the round. It is abandoned in
    the tick that opens the share stage, by the unmask refusal's reason, with no KeyDirectory or
    ShareDelivery sent to any device; the store records it abandoned with that reason, and the
    leader restarted on that store runs the next round with every device."""
    assert {_shard(d) for d in SILENT} == {0} and sum(_shard(f"dev{i}") == 0 for i in range(len(SIZES))) == 4
    fleet = _fleet(model, tmp_path, postgres_dsn, store=PostgresStore(postgres_dsn))
    c = fleet.coordinator
    everyone, version = list(fleet.agents), c.state.version
    assert c.begin_round()
    round_id = c.round.ctx.round_id
    fleet.agents = [a for a in everyone if a.device_id not in SILENT]  # their SecAggTasks go unread
    share_opened = record = None
    for _ in range(40):
        fleet.drain()
        advertising = c.round.machine.stage == 0
        record = c.tick()
        if share_opened is None and advertising and (record is not None or c.round.machine.stage > 0):
            share_opened = fleet.clock.now()  # this tick ended the advertise stage
        if record is not None:
            break
        fleet.clock.advance(1.0 if c.round.machine.stage_full else SECURE.stage_deadline_s + 1)
    assert record is not None and share_opened is not None
    assert (record.round_id, record.committed, record.why) == (round_id, False, WHY)
    # closed as the share stage opened: well before its deadline (the old path waited it out, then the mask stage)
    assert fleet.clock.now() == share_opened  # closed in the tick the share stage opened, not at its deadline
    assert c.state.version == version
    fleet.drain()
    sent = [type(m) for m in fleet.wire if isinstance(m, (SecAggTask, KeyDirectory, ShareDelivery, UnmaskRequest))]
    assert sent == [SecAggTask] * len(SIZES), sent  # the advertise stage's tasks, nothing after them

    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT status FROM rounds WHERE round_id = %s", (round_id,)).fetchall() == [("abandoned",)]
    (stored,) = [r for r in c.store.round_records() if r["round_id"] == round_id]
    assert (stored["committed"], stored["why"]) == (False, WHY)
    assert c.metrics.registry.get_sample_value("fedge_rounds_total", {"outcome": "abandoned"}) == 1

    _, manifest, runtime = model  # the leader's process again, on the same database
    fleet.coordinator = ShardedCoordinator(fleet.broker.connect("coordinator"), make_strategy("fedavg", c.config.hyper),
                                           manifest, runtime.initial("shared"), c.config, clock=fleet.clock,
                                           store=PostgresStore(postgres_dsn))
    fleet.coordinator.poll_s = 0.0
    fleet.coordinator.start()
    assert fleet.coordinator.round is None and fleet.coordinator.next_round_id == round_id + 1
    fleet.agents = everyone  # the next round opens with the next id and every device answers it
    nxt = _run_round(fleet)
    assert (nxt.round_id, nxt.committed, nxt.reports) == (round_id + 1, True, len(SIZES)), nxt.why
