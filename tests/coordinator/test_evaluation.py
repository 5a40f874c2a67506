"""Federated evaluation (coordinator/evaluation.py, edge_runtime/evaluation.py).

Oracles: with every device asked, the coordinator's example-weighted numbers equal the global
model scored directly on the union of the devices' held-out splits (one predict call, the
loss by scipy's log_softmax), and the personalized numbers equal each device's stored
personal head scored directly; a sample lies within 3 binomial standard errors of the union
score. Then the hostile cases: reports nobody asked for, duplicates, forged senders, claims
over the cap, a silent device (the evaluation closes at its deadline), and what is stored
and exported."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy.special import log_softmax

from fedge.coordinator.evaluation import EvalConfig, combine
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError, NotConnected
from fedge.edge_runtime.kernel.protocol import EvalReport, EvalTask
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.trainer import make_backend
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.tiny_model import build_tiny_model

ALL = EvalConfig(every_rounds=1, devices=0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _commit(fleet):
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    record = c.tick()
    assert record is not None and record.committed
    fleet.drain()  # the evaluation tasks the commit sent, and the devices' reports
    return c.evaluations.history[-1]


def _direct(fleet, agents, shared):
    """(union accuracy, union loss, personalized accuracy, examples) of `shared`, scored here."""
    art, manifest, runtime = fleet.model
    backend = make_backend("portable", art, manifest, "sgd")
    hits, losses, personal_hits, n = 0.0, 0.0, 0.0, 0
    for agent in agents:
        data = agent.runtime.data
        mine = DeviceStore(agent.runtime.state_root / agent.device_id, manifest.model_id).load_personal()
        logits = backend.predict({**shared, **(mine or runtime.initial("personal"))}, runtime.embed(data.x_test))
        y = data.y_test
        hits += np.sum(np.argmax(logits["global"], axis=1) == y)
        losses += -np.sum(log_softmax(logits["global"].astype(np.float64), axis=1)[np.arange(len(y)), y])
        personal_hits += np.sum(np.argmax(logits["personal"], axis=1) == y)
        n += len(y)
    return hits / n, losses / n, personal_hits / n, n


def test_every_device_asked_equals_the_union_of_their_held_out_splits(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(30, 50, 20, 40), evaluation=ALL)
    c = fleet.coordinator
    for _ in range(2):
        ev = _commit(fleet)
        assert ev.complete and ev.asked == ev.reported == 4 and ev.model_version == c.state.version
        accuracy, loss, personal, n = _direct(fleet, fleet.agents, c.state.params)
        assert ev.examples == ev.examples_personal == n == 4 * 6
        assert ev.accuracy_global == pytest.approx(accuracy, abs=1e-12)
        assert ev.loss_global == pytest.approx(loss, rel=1e-9)
        assert ev.accuracy_personal == pytest.approx(personal, abs=1e-12)
        assert ev.bytes_eval_down > 0 and ev.bytes_eval_up > 0
    sample = {"model": "global"}
    assert c.metrics.registry.get_sample_value("fedge_eval_accuracy", sample) == ev.accuracy_global
    assert c.metrics.registry.get_sample_value("fedge_eval_loss", sample) == ev.loss_global
    assert c.metrics.registry.get_sample_value("fedge_evaluations_total", {"outcome": "complete"}) == 2


def test_a_sample_lies_within_three_binomial_standard_errors_of_the_union(model, tmp_path):
    sizes = (20,) * 12
    fleet = make_fleet(model, tmp_path, sizes=sizes, clients_per_round=6,
                       evaluation=EvalConfig(every_rounds=1, devices=5))
    c = fleet.coordinator
    for _ in range(3):
        ev = _commit(fleet)
        assert ev.asked == ev.reported == 5
        accuracy, _, _, n = _direct(fleet, fleet.agents, c.state.params)
        assert n == 12 * 6 and ev.examples == 5 * 6
        se = math.sqrt(accuracy * (1 - accuracy) / ev.examples)
        assert abs(ev.accuracy_global - accuracy) <= 3 * se, (ev.accuracy_global, accuracy, se)


def test_combine_is_the_capped_example_weighted_mean():
    reports = [EvalReport("a", "e", 1, 10, True, 0.5, 0.9, True, 0.2, 1.0),
               EvalReport("b", "e", 1, 2**32 - 1, True, 3.0, 0.1, False),
               EvalReport("c", "e", 1, 0, True, 9.0, 0.0),  # no held-out data: no weight
               EvalReport("d", "e", 1, reason="battery_low")]
    out = combine(reports, max_examples=30)
    weights = {"a": 10, "b": 30}  # b's claim capped
    assert out["examples"] == 40 and out["examples_personal"] == 10
    assert out["accuracy_global"] == pytest.approx((10 * 0.9 + 30 * 0.1) / 40)
    assert out["loss_global"] == pytest.approx((10 * 0.5 + 30 * 3.0) / sum(weights.values()))
    assert out["accuracy_personal"] == 1.0 and out["loss_personal"] == 0.2
    assert combine([], 5) == {"examples": 0, "loss_global": None, "accuracy_global": None,
                              "examples_personal": 0, "loss_personal": None, "accuracy_personal": None}


def test_hostile_reports_are_refused_by_name_and_a_silent_device_closes_it_at_the_deadline(model, tmp_path):
    store = RoundStore(tmp_path / "state.db")
    fleet = make_fleet(model, tmp_path, sizes=(30, 40), clients_per_round=2, store=store,
                       evaluation=EvalConfig(every_rounds=1, devices=0, deadline_s=50.0))
    c = fleet.coordinator
    mallory = ManualDevice(fleet, "mallory", 5)  # eligible, never trains (not selected: 2 of 3 asked)
    fleet.drain()
    assert c.begin_round()
    fleet.drain()
    selected = c.round.machine.selected
    record = None
    while record is None:
        fleet.clock.advance(60.0)
        record = c.tick()
    fleet.drain()
    run = c.evaluations.run
    if "mallory" in run.asked:
        mallory.receive()
        task = [m for m in mallory.inbox if isinstance(m, EvalTask)][-1]
        forged = EvalReport("mallory", "not-its-id", task.model_version, 5, True, 0.1, 1.0)
        mallory.send(encode_message(forged))
        mallory.send(encode_message(EvalReport("dev0", task.eval_id, task.model_version, 5, True, 0.1, 1.0)))
        fleet.drain()
        assert c.rejections["stale_eval"] == 2  # a wrong id; a report sent in another device's name
        # mallory never sends a valid report: the evaluation waits for it until the deadline
        assert c.evaluations.run is not None
        fleet.clock.advance(51.0)
        c.tick()
        ev = c.evaluations.history[-1]
        assert not ev.complete and ev.asked == 3 and ev.reported == 2
        assert c.metrics.registry.get_sample_value("fedge_evaluations_total", {"outcome": "partial"}) == 1
    else:
        pytest.fail(f"mallory was not asked to evaluate; selected {selected}")
    # a late copy of a counted report, and one for an evaluation that has closed
    dev0 = ev.per_device["dev0"]
    late = EvalReport("dev0", "whatever", ev.model_version, dev0["examples"], True, 0.1, 1.0)
    fleet.broker.connect("dev0-forger").publish("fedge/v1/devices/dev0/update", encode_message(late))
    fleet.drain()
    assert c.rejections["stale_eval"] == 3
    assert store.evaluation_records()[-1]["accuracy_global"] == ev.accuracy_global
    store.close()
    assert RoundStore(tmp_path / "state.db").evaluation_records()[-1]["reported"] == 2  # survives the process


def test_a_duplicate_report_counts_once(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(30, 40), clients_per_round=2,
                       evaluation=EvalConfig(every_rounds=1, devices=0, deadline_s=50.0))
    c = fleet.coordinator
    mallory = ManualDevice(fleet, "mallory", 5)
    ManualDevice(fleet, "quiet", 5)  # keeps the evaluation open: it never answers
    fleet.drain()
    assert c.begin_round()
    fleet.drain()
    record = None
    while record is None:
        fleet.clock.advance(60.0)
        record = c.tick()
    fleet.drain()
    mallory.receive()
    task = [m for m in mallory.inbox if isinstance(m, EvalTask)][-1]
    report = EvalReport("mallory", task.eval_id, task.model_version, 5, True, 0.1, 1.0)
    for _ in range(2):
        mallory.send(encode_message(report))
    fleet.drain()
    assert c.rejections["duplicate"] == 1
    fleet.clock.advance(51.0)
    c.tick()
    ev = c.evaluations.history[-1]
    assert ev.asked == 4 and ev.reported == 3 and ev.per_device["mallory"]["accuracy_global"] == 1.0


def test_an_ineligible_or_modelless_device_says_why_instead_of_staying_silent(model, tmp_path):
    from fedge.edge_runtime.evaluation import answer_eval

    fleet = make_fleet(model, tmp_path, sizes=(30,), evaluation=ALL)
    runtime = fleet.agents[0].runtime
    shared = fleet.coordinator.state.params
    from fedge.edge_runtime.kernel.update_codec import encode_dense

    task = EvalTask("e1", runtime.device_id, fleet.model[1].model_id, 0, 0, encode_dense(shared))
    runtime.eligibility = lambda: "battery_low"
    assert answer_eval(runtime, task).reason == "battery_low"
    runtime.eligibility = lambda: None
    other = EvalTask("e2", runtime.device_id, "some-other-model", 0, 0, encode_dense(shared))
    assert answer_eval(runtime, other).reason == "model_missing"
    scored = answer_eval(runtime, task)
    assert scored.reason == "" and scored.num_examples == 6 and scored.has_global and scored.has_personal


def test_the_newest_model_a_device_evaluated_is_the_one_it_exports(model, tmp_path):
    """The final round's model reaches a device only in an evaluation; `fedge device export`
    once gave the model of the device's last task, a version behind the fleet."""
    from fedge.edge_runtime.evaluation import answer_eval
    from fedge.edge_runtime.kernel.update_codec import encode_dense

    fleet = make_fleet(model, tmp_path, sizes=(30,), evaluation=ALL)
    _commit(fleet)  # the device trained on version 0, and evaluated version 1
    runtime, model_id = fleet.agents[0].runtime, fleet.model[1].model_id
    store = DeviceStore(runtime.state_root / runtime.device_id, model_id)
    committed = fleet.coordinator.state.params
    assert store.global_version() == 1
    assert all(np.array_equal(store.load_global()[k], v) for k, v in committed.items())
    older = {k: v + 1.0 for k, v in committed.items()}
    assert answer_eval(runtime, EvalTask("old", runtime.device_id, model_id, 0, 0, encode_dense(older))).reason == ""
    assert store.global_version() == 1 and np.array_equal(store.load_global()[next(iter(older))],
                                                          committed[next(iter(older))])  # an older one is not kept
    newer = EvalTask("new", runtime.device_id, model_id, 2, 2, encode_dense(older))
    assert answer_eval(runtime, newer).reason == "" and store.global_version() == 2


def test_a_model_whose_outputs_overflow_is_declined_and_not_kept(model, tmp_path):
    """Finite weights whose logits overflow: argmax of NaN is 0, so the device once reported a
    made-up accuracy for the model and kept it as the global model `fedge device export` writes."""
    from fedge.edge_runtime.evaluation import answer_eval
    from fedge.edge_runtime.kernel.update_codec import encode_dense

    fleet = make_fleet(model, tmp_path, sizes=(30,), evaluation=ALL)
    _commit(fleet)
    runtime, model_id = fleet.agents[0].runtime, fleet.model[1].model_id
    store = DeviceStore(runtime.state_root / runtime.device_id, model_id)
    huge = {k: np.where(np.arange(v.size).reshape(v.shape) % 2, 3e38, -3e38).astype(np.float32)
            for k, v in fleet.coordinator.state.params.items()}
    assert all(np.isfinite(v).all() for v in huge.values())
    report = answer_eval(runtime, EvalTask("big", runtime.device_id, model_id, 5, 5, encode_dense(huge)))
    assert report.reason == "non_finite" and not report.has_global
    assert store.global_version() == 1  # the committed model stays the one it exports


@pytest.mark.filterwarnings("error::RuntimeWarning")  # inf - inf once printed numpy's warning
def test_overflowing_logits_count_wrong_where_nothing_is_kept(model, tmp_path):
    """The simulator's own scoring (strict=False) and the device's personal head: rows whose
    logits are not finite count as wrong instead of stopping a finished run after its last round,
    or blocking every evaluation of a sound global model because the device's own head diverged."""
    from fedge.edge_runtime.evaluation import answer_eval
    from fedge.edge_runtime.kernel.update_codec import encode_dense

    fleet = make_fleet(model, tmp_path, sizes=(30,), evaluation=ALL)
    _commit(fleet)
    runtime, model_id = fleet.agents[0].runtime, fleet.model[1].model_id
    shared = fleet.coordinator.state.params
    huge = {k: np.where(np.arange(v.size).reshape(v.shape) % 2, 3e38, -3e38).astype(np.float32)
            for k, v in shared.items()}
    scores = runtime.evaluate(model_id, huge, strict=False)
    assert scores.accuracy_global == 0.0 and scores.num_test == 6
    store = DeviceStore(runtime.state_root / runtime.device_id, model_id)
    personal = store.load_personal()
    store.save_personal({k: np.full_like(v, 3e38) for k, v in personal.items()})
    report = answer_eval(runtime, EvalTask("sound", runtime.device_id, model_id, 3, 3, encode_dense(shared)))
    assert report.reason == "" and report.has_personal and report.accuracy_personal == 0.0
    assert store.global_version() == 3  # the sound global model is kept


def test_a_link_that_fails_while_the_evaluation_is_sent_still_returns_the_commit(model, tmp_path, caplog):
    """after_commit runs as a round closes: a send that failed there (a noise-only round rerun at
    start closes before the link is up) raised out of the close, and the committed round's record
    never reached the caller. The evaluation now stops asking and closes at its deadline."""
    fleet = make_fleet(model, tmp_path, sizes=(30, 30, 30), evaluation=ALL)
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    send, sent = c.outbound.send, []

    def failing(topic, payload, *args, **kwargs):
        if topic.endswith("/task"):  # the evaluation's tasks: the first goes, then the link fails
            if sent:
                raise NotConnected("the link is down")
            sent.append(topic)
        return send(topic, payload, *args, **kwargs)

    c.outbound.send = failing
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        record = c.tick()
    assert record is not None and record.committed and c.state.version == 1
    assert len(sent) == 1 and c.evaluations.run is not None and len(c.evaluations.run.asked) == 3
    assert any("1 of 3 devices asked before the link failed" in r.getMessage() for r in caplog.records)


def test_a_delayed_older_task_does_not_put_the_export_back_a_version(model, tmp_path):
    """In async mode a task can arrive after the device evaluated a newer model; it once wrote
    its older model over global.npz. A coordinator that started over (a new state database: its
    announced version is below what the device holds) still replaces it."""
    import dataclasses

    fleet = make_fleet(model, tmp_path, sizes=(30,), evaluation=ALL)
    _commit(fleet)  # trained on version 0, evaluated version 1
    runtime, model_id = fleet.agents[0].runtime, fleet.model[1].model_id
    store = DeviceStore(runtime.state_root / runtime.device_id, model_id)
    assert store.global_version() == 1 and runtime.announced[model_id] == 1  # the agent heard the announcement
    late = dataclasses.replace(fleet.tasks()[0], task_id="late", deadline_s=600.0)
    assert late.model_version == 0
    assert runtime.handle_task(late).update_id  # it trains as before ...
    assert store.global_version() == 1  # ... and the export keeps the newer model
    runtime.announced[model_id] = 0  # a coordinator on a new state database announces version 0
    assert runtime.handle_task(dataclasses.replace(late, task_id="anew")).update_id
    assert store.global_version() == 0


@pytest.mark.parametrize("held, version, announced, kept", [
    (None, 3, None, 3), (2, 3, None, 3), (3, 3, 3, 3), (3, 2, None, 3), (3, 2, 3, 3), (3, 2, 5, 3), (3, 2, 2, 2),
    (3, 0, 0, 0)])
def test_which_global_model_the_device_keeps(tmp_path, held, version, announced, kept):
    """Kept: the received one unless it is older than the held one and the coordinator's
    announced version says the held one is from this same federation (announced >= held)."""
    store = DeviceStore(tmp_path, "m")
    if held is not None:
        store.save_global({"w": np.full(2, float(held), np.float32)}, held)
    store.keep_global({"w": np.full(2, float(version), np.float32)}, version, announced)
    assert store.global_version() == kept and store.load_global()["w"][0] == kept


def test_an_unreadable_global_model_is_replaced_by_the_next_one(tmp_path):
    """save_global does not fsync: a power cut may leave global.npz unreadable, and the version
    check before each task's write must not turn that into a failed task."""
    store = DeviceStore(tmp_path, "m")
    store.save_global({"w": np.zeros(2, np.float32)}, 5)
    (tmp_path / "m" / "global.npz").write_bytes(b"not a zip")
    assert store.global_version() is None
    assert store.keep_global({"w": np.ones(2, np.float32)}, 1, None)
    assert store.global_version() == 1 and store.load_global()["w"][0] == 1.0


def test_the_config_validates_itself():
    for bad in (dict(every_rounds=-1), dict(devices=-2), dict(deadline_s=0.0), dict(deadline_s=float("inf"))):
        with pytest.raises(ConfigError):
            EvalConfig(**bad)


class _RefusedOnTheWire:
    """The coordinator's Outbound, with each EvalTask framed as the devices' codec refuses it
    (an unknown field for dev0, an unsafe model id for dev1)."""

    edits = {"dev0": lambda body: body.update(surprise=1), "dev1": lambda body: body.update(model_id="../x")}

    def __init__(self, outbound):
        self.outbound, self.send = outbound, outbound.send

    def encode(self, message):
        from tests.edge_runtime.one_device import reframed

        edit = self.edits.get(message.device_id) if isinstance(message, EvalTask) else None
        return self.outbound.encode(message) if edit is None else reframed(message, edit)


def test_an_evaluation_every_device_refuses_closes_before_its_deadline_counted_by_reason(model, tmp_path):
    """Before, each device only logged the EvalTask its wire refused, and the evaluation stayed
    open until evaluation.deadline_s. A refusal's numbers are not counted, and one sent in
    another device's name is refused."""
    fleet = make_fleet(model, tmp_path, sizes=(30, 40), clients_per_round=2,
                       evaluation=EvalConfig(every_rounds=1, devices=0, deadline_s=50.0))
    c = fleet.coordinator
    c.evaluations.outbound = _RefusedOnTheWire(c.evaluations.outbound)
    mallory = ManualDevice(fleet, "mallory", 5)  # refuses too, claiming numbers and speaking for dev0
    fleet.drain()
    assert c.begin_round()
    fleet.drain()
    while c.tick() is None:
        fleet.clock.advance(60.0)
    fleet.drain()  # the evaluation tasks and the two agents' refusals; the clock stands still from here
    asked_at = fleet.clock.now()
    mallory.receive()
    task = [m for m in mallory.inbox if isinstance(m, EvalTask)][-1]
    for device in ("dev0", "mallory"):
        mallory.send(encode_message(EvalReport(device, task.eval_id, task.model_version, 5, True, 0.1, 1.0,
                                               reason="battery_low", detail="x" * 200)))
    fleet.drain()
    assert c.rejections["stale_eval"] == 1  # the refusal in dev0's name
    assert c.evaluations.run is None and fleet.clock.now() == asked_at
    ev = c.evaluations.history[-1]
    assert ev.complete and (ev.asked, ev.reported) == (3, 0)
    assert ev.declined == {"malformed": 2, "battery_low": 1}
    assert ev.examples == 0 and ev.accuracy_global is None and ev.per_device == {}
    details = {r.device_id: r.detail for r in fleet.wire if isinstance(r, EvalReport) and r.reason == "malformed"}
    assert "surprise" in details["dev0"] and "model_id" in details["dev1"]
    metrics = c.metrics.registry
    assert metrics.get_sample_value("fedge_eval_devices", {"outcome": "declined"}) == 3
    assert metrics.get_sample_value("fedge_evaluations_total", {"outcome": "complete"}) == 1
