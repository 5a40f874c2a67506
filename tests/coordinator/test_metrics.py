"""Prometheus series after real rounds, read from the text exposition a scraper would see."""

from __future__ import annotations

import urllib.request
from collections import Counter

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedge.coordinator.metrics import MAX_DECLINE_REASONS, CoordinatorMetrics
from fedge.coordinator.metrics_http import serve_metrics
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, Decline, FetchRequest
from tests.coordinator.fleet import ManualDevice, make_fleet, one_device_round
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _samples(registry) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} parsed back from the exposition text."""
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_series_after_a_committed_and_an_abandoned_round(model, tmp_path):
    why = {"now": None}
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35), eligibility=lambda: why["now"])
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    fleet.clock.advance(12.0)
    assert c.tick().committed
    why["now"] = "battery_low"
    assert c.begin_round()
    fleet.drain()
    assert not c.tick().committed
    garbage = ManualDevice(fleet, "noise", 1)
    garbage.send(b"\x00" * 40)
    fleet.drain()

    s = _samples(c.metrics.registry)
    assert s[("fedge_rounds_total", (("outcome", "committed"),))] == 1
    assert s[("fedge_rounds_total", (("outcome", "abandoned"),))] == 1
    assert s[("fedge_round_participants", ())] == 0  # the last round, the abandoned one
    assert s[("fedge_participants_total", ())] == 3
    assert s[("fedge_updates_accepted_total", ())] == 3
    assert s[("fedge_declines_total", (("reason", "battery_low"),))] == 3
    assert s[("fedge_rejections_total", (("reason", "malformed"),))] == 1
    assert s[("fedge_round_id", ())] == 2 and s[("fedge_round_open", ())] == 0
    assert s[("fedge_model_version", ())] == 1
    assert s[("fedge_devices_registered", ())] == 4 and s[("fedge_devices_eligible", ())] == 4
    assert s[("fedge_round_duration_seconds_count", ())] == 2
    assert s[("fedge_round_duration_seconds_sum", ())] == pytest.approx(12.0)
    assert s[("fedge_round_duration_seconds_bucket", (("le", "15.0"),))] == 2
    assert s[("fedge_round_duration_seconds_bucket", (("le", "5.0"),))] == 1
    assert s[("fedge_pace_total", (("reason", "no_round"),))] == 4
    assert s[("fedge_pace_total", (("reason", "declined"),))] == 3
    # Bytes: every payload the coordinator's client sent or got, as the broker counted them.
    stats = fleet.broker.stats("coordinator")
    assert s[("fedge_published_bytes_total", ())] == stats.bytes_published
    assert s[("fedge_received_bytes_total", ())] == stats.bytes_received
    round_bytes = sum(r.bytes_down for r in c.history)
    assert 0 < round_bytes < stats.bytes_published


def test_each_coordinator_has_its_own_registry(model, tmp_path):
    first = make_fleet(model, tmp_path / "a", sizes=(5,))
    second = make_fleet(model, tmp_path / "b", sizes=(5, 6))
    assert first.coordinator.metrics.registry is not second.coordinator.metrics.registry
    assert _samples(first.coordinator.metrics.registry)[("fedge_devices_registered", ())] == 1
    assert _samples(second.coordinator.metrics.registry)[("fedge_devices_registered", ())] == 2


def test_device_chosen_decline_reasons_cannot_grow_the_label_set_without_bound():
    m = CoordinatorMetrics()
    for i in range(500):
        m.declined(f"reason-{i} with spaces/and{{braces}}")
    m.declined("battery_low")
    labels = {s.labels["reason"] for f in text_string_to_metric_families(generate_latest(m.registry).decode())
              if f.name == "fedge_declines" for s in f.samples if s.name.endswith("_total")}
    assert len(labels) == 65 and "other" in labels and "battery_low" not in labels
    assert all(len(label) <= 48 and " " not in label and "{" not in label for label in labels)


def test_serve_metrics_exposes_the_registry_over_http(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(5,))
    server, thread = serve_metrics(fleet.coordinator.metrics.registry, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "fedge_devices_registered 1.0" in body
        assert "python_gc_objects_collected_total" not in body  # not the process-global registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_fetch_without_artifacts_is_a_counted_rejection(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=())  # artifacts_dir unset
    dev = ManualDevice(fleet, "pi", 1)
    dev.send(encode_message(FetchRequest("pi", fleet.coordinator.manifest.model_id)), channel="fetch")
    fleet.drain()
    s = _samples(fleet.coordinator.metrics.registry)
    assert s[("fedge_rejections_total", (("reason", "artifact_unavailable"),))] == 1


def test_the_transports_drops_and_refused_publishes_are_exported():
    class Link:  # what MqttTransport exposes; its counters move on paho's thread
        dropped = Counter({"oversize": 3, "chunks_evicted": 7})
        refused_publishes = 2

    m = CoordinatorMetrics()
    s = _samples(m.registry)  # before any transport: the series exist, at zero
    assert s[("fedge_publishes_refused_total", ())] == 0
    link = Link()
    m.watch_transport(link)
    s = _samples(m.registry)
    assert s[("fedge_transport_dropped_total", (("reason", "oversize"),))] == 3
    assert s[("fedge_transport_dropped_total", (("reason", "chunks_evicted"),))] == 7
    assert s[("fedge_publishes_refused_total", ())] == 2
    link.refused_publishes = 5  # read at scrape time
    assert _samples(m.registry)[("fedge_publishes_refused_total", ())] == 5


def test_failed_broker_connections_are_exported_by_cause():
    class Link:  # MqttTransport.connect_failures.by_cause, kept on paho's thread
        connect_failures = type("Failures", (), {"by_cause": Counter({"tls_untrusted": 4})})()

    m = CoordinatorMetrics()
    assert _samples(m.registry)[("fedge_broker_connect_failures_total", (("cause", "refused"),))] == 0
    m.watch_transport(Link())
    s = _samples(m.registry)
    assert s[("fedge_broker_connect_failures_total", (("cause", "tls_untrusted"),))] == 4
    assert s[("fedge_broker_connect_failures_total", (("cause", "tls_hostname"),))] == 0


def test_messages_on_unexpected_channels_are_counted_by_name(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=())
    dev = ManualDevice(fleet, "pi", 1)
    fleet.drain()
    checkin = encode_message(CheckIn("pi", eligible=True, num_examples=1))
    dev.send(checkin, channel="update")  # a CheckIn where updates go
    dev.send(checkin, channel="fetch")
    dev.send(encode_message(CheckIn("someone-else", eligible=True)), channel="checkin")  # not its own id
    fleet.drain()
    assert fleet.coordinator.rejections == {"unexpected_message": 3}
    assert "someone-else" not in fleet.coordinator.registry
    s = _samples(fleet.coordinator.metrics.registry)
    assert s[("fedge_rejections_total", (("reason", "unexpected_message"),))] == 3


def test_labelled_counters_start_at_zero_for_every_reason_fedge_names():
    from prometheus_client import generate_latest

    from fedge.coordinator.metrics import CoordinatorMetrics

    text = generate_latest(CoordinatorMetrics().registry).decode()
    for line in ('fedge_rounds_total{outcome="committed"} 0.0', 'fedge_rounds_total{outcome="abandoned"} 0.0',
                 'fedge_rejections_total{reason="norm_bound"} 0.0', 'fedge_rejections_total{reason="malformed"} 0.0',
                 'fedge_rejections_total{reason="unknown_task"} 0.0', 'fedge_pace_total{reason="declined"} 0.0',
                 "fedge_received_bytes_total 0.0", "fedge_published_bytes_total 0.0"):
        assert line in text, line


def test_device_chosen_decline_reasons_cannot_grow_the_coordinators_tallies(model, tmp_path):
    """The in-process tallies (declines, decline_details; the simulator's summary reads them) had no
    bound: one device declining each round with a new made-up reason added a key per round."""
    fleet = make_fleet(model, tmp_path, clients_per_round=1)
    c = fleet.coordinator
    dev = ManualDevice(fleet, "chatty", 4)
    fleet.drain()
    extra = 20
    for i in range(MAX_DECLINE_REASONS + extra):
        fleet.clock.advance(10_000)  # past any rest and abandoned-round backoff
        assert c.begin_round()
        fleet.drain()
        task = dev.task()
        dev.send(encode_message(Decline("chatty", task.round_id, task.task_id, f"made-up-{i}", f"detail {i}")))
        fleet.drain()
        assert not c.tick().committed
    dev.send(encode_message(Decline("chatty", task.round_id, task.task_id, "late", "")))  # no round open
    fleet.drain()
    fleet.clock.advance(10_000)
    assert c.begin_round()
    fleet.drain()
    task = dev.task()
    dev.send(encode_message(Decline("chatty", task.round_id, task.task_id, "made-up-0", "again")))
    fleet.drain()
    assert sum(c.declines.values()) == MAX_DECLINE_REASONS + extra + 1  # every decline counted
    assert len(c.declines) == MAX_DECLINE_REASONS + 1  # 64 reasons of their own, then "other"
    assert c.declines["other"] == extra and c.declines["made-up-0"] == 2  # a known reason keeps its key
    assert set(c.decline_details) == set(c.declines) and c.decline_details["made-up-0"] == "again"


def test_a_decline_is_logged_with_its_detail_quoted_and_cut(model, tmp_path, caplog):
    """"round N: dev declined: secagg_failed" did not say why: operators blamed the decliner for a
    neighbour missing from its own directory. The detail is the device's text: quoted (%r), at most
    the 300 characters decline_details keeps, never raw."""
    fleet, dev, task = one_device_round(model, tmp_path, "dev0")
    c = fleet.coordinator
    detail = "neighbour dev7 is not in this device's directory\n" + "x" * 1000
    with caplog.at_level("INFO", logger="fedge.coordinator"):
        dev.send(encode_message(Decline("dev0", task.round_id, task.task_id, "secagg_failed", detail)))
        fleet.drain()
    said = [r.getMessage() for r in caplog.records if "declined" in r.getMessage()]
    assert said == [f"round {task.round_id}: dev0 declined: secagg_failed ({detail[:300]!r})"]
    assert "\n" not in said[0] and c.decline_details["secagg_failed"] == detail[:300]
