"""`fedge bench mqtt` without its slow end-to-end run (mutation9-mqtt): the ratios are the round
over each baseline and the round-trip baseline sends bytes_down / N to each device; every
device id goes to exactly one worker process of at most PER_PROCESS; a round short of one report
is refused; `update_kb` is KiB; the fd limit is raised no further than the hard limit; and the
raw paho baseline publishes and answers at QoS 1, like fedge, through a real Mosquitto."""

from __future__ import annotations

import queue
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.tools.bench import mqtt as bench
from tests.mqtt_fixtures import RawClient


def test_the_ratios_divide_the_round_by_each_baseline(monkeypatch, tmp_path):
    downs = []

    def raw(url, devices, payload, workdir, timeout_s, down=b""):
        downs.append(len(down))
        return 1.5 if down else 0.5

    detail = {"committed": True, "reports": 150, "bytes_up": 1, "bytes_down": 7001, "update_bytes": 9,
              "payload_sample": b"p"}
    monkeypatch.setattr(bench, "fedge_round", lambda *a: (3.0, dict(detail)))
    monkeypatch.setattr(bench, "raw_paho", raw)
    monkeypatch.setattr(bench, "_raise_fd_limit", lambda needed: None)
    result = bench.run(150, 8, str(tmp_path / "r.json"), broker_url="mqtt://127.0.0.1:1", timeout_s=5)
    assert (result["ratio"], result["ratio_round_trip"]) == (3.0 / 0.5, 3.0 / 1.5)
    assert downs == [0, 7001 // 150]  # what fedge sent each device, on average
    assert result["device_processes"] == 2  # 150 devices, at most 100 a process


class _Ctx:
    """multiprocessing's spawn context, recording the processes instead of starting them."""

    def __init__(self):
        self.started = []

    def Process(self, target, args, daemon):  # noqa: N802 (multiprocessing's name)
        return SimpleNamespace(start=lambda: self.started.append(args[2]))

    Queue, Event = queue.Queue, threading.Event


def test_every_device_goes_to_exactly_one_worker_process(monkeypatch):
    ctx = _Ctx()
    monkeypatch.setattr(bench, "mp", SimpleNamespace(get_context=lambda kind: ctx))
    bench._Workers("fedge", "mqtt://127.0.0.1:1", 250, b"", 0, "m", "/nonexistent", 5)
    assert [len(ids) for ids in ctx.started] == [100, 100, 50]
    assert [i for ids in ctx.started for i in ids] == [f"dev-{i:05d}" for i in range(250)]


def test_a_round_short_of_one_report_is_refused(monkeypatch, tmp_path):
    def coordinator(transport, strategy, manifest, initial, cfg, reports):
        record = SimpleNamespace(committed=True, reports=reports, why="", bytes_up=1, bytes_down=1)
        return SimpleNamespace(registry=dict.fromkeys(range(cfg.clients_per_round)), transport=transport,
                               start=lambda: None, pump=lambda s: False, begin_round=lambda: None,
                               tick=lambda: record, declines={}, rejections={})

    link = SimpleNamespace(connect=lambda: link, close=lambda: None)
    monkeypatch.setattr(bench, "MqttTransport", lambda *a: link)
    monkeypatch.setattr(bench, "_Workers", lambda *a: SimpleNamespace(wait_ready=lambda: 3, close=lambda: None))
    manifest, initial = bench._model(1)
    for reports in (3, 2):
        monkeypatch.setattr(bench, "Coordinator", lambda *a, n=reports: coordinator(*a, n))
        if reports == 3:
            assert bench.fedge_round("mqtt://127.0.0.1:1", 3, manifest, initial, tmp_path, 5, 0)[1]["reports"] == 3
        else:
            with pytest.raises(RuntimeError, match="did not commit with all 3 reports"):
                bench.fedge_round("mqtt://127.0.0.1:1", 3, manifest, initial, tmp_path, 5, 0)


def test_update_kb_is_kibibytes_of_fp32():
    _, initial = bench._model(8)
    assert initial["w"].dtype == np.float32 and initial["w"].nbytes == 8 * 1024


@pytest.mark.parametrize("soft, hard, expect", [(256, 1024, [(1024, 1024)]), (256, 65536, [(5000, 65536)]),
                                                (8000, 65536, [])])
def test_the_fd_limit_is_raised_to_what_is_needed_within_the_hard_limit(monkeypatch, soft, hard, expect):
    set_to = []

    def setrlimit(kind, limits):
        if limits[0] > limits[1]:  # setrlimit(2): EINVAL, which Python raises as ValueError
            raise ValueError("not allowed to raise maximum limit")
        set_to.append(limits)

    monkeypatch.setattr(bench, "resource", SimpleNamespace(RLIMIT_NOFILE=7, getrlimit=lambda kind: (soft, hard),
                                                           setrlimit=setrlimit))
    bench._raise_fd_limit(5000)
    assert set_to == expect


@pytest.mark.parametrize("mode", ["raw", "raw-answer"])
def test_the_raw_baseline_sends_at_qos1_like_fedge(mosquitto, mode):
    sub = RawClient(mosquitto.host, mosquitto.port, client_id="sub")
    assert sub.connect() and sub.subscribe("raw/devices/+/update") == [1]
    ready, go, stop = queue.Queue(), threading.Event(), threading.Event()
    ids = ["dev-00000", "dev-00001"]
    worker = threading.Thread(target=bench._device_worker,
                              args=(mode, mosquitto.url, ids, b"update", 0, "", "", ready, go, stop))
    worker.start()
    try:
        assert ready.get(timeout=10) == 2
        if mode == "raw":
            go.set()
        else:
            for device_id in ids:
                sub.publish(f"raw/devices/{device_id}/task", b"task")
        arrived = sorted(sub.expect() for _ in ids)
        assert arrived == [(f"raw/devices/{d}/update", b"update", False) for d in ids] and sub.qos == [1, 1]
    finally:
        stop.set()
        worker.join(10)
        sub.close()


def test_a_bad_model_part_bytes_is_refused_before_a_broker_starts(monkeypatch):
    """It was refused by name only after Mosquitto and the coordinator had started (noticed by
    the mutation9-mqtt audit)."""
    import fedge.tools.broker as broker_pkg
    from fedge.edge_runtime.kernel.errors import ConfigError

    def no_broker(*args, **kwargs):
        raise AssertionError("a broker was started")

    monkeypatch.setattr(broker_pkg, "MosquittoProcess", no_broker)
    with pytest.raises(ConfigError, match="model_part_bytes"):
        bench.run(4, 1, None, model_part_bytes=-5)
