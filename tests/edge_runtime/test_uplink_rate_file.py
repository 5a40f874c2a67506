"""The learned upload rate survives a restart (edge_runtime/uplink_rate_file.py): a device that
learned its rate, restarted on the same state folder, uses the learned margin at once; a file
that is damaged, hostile or learned under another configured rate or latency is ignored with one
log line (the configured rate, as with no file); learning off neither reads nor writes it; and
the file costs no durable write."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import replace

import pytest

from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.device_folder import UPLINK_RATE_FILE
from fedge.edge_runtime.kernel.files import DURABLE_WRITES
from fedge.edge_runtime.uplink import Uplink
from fedge.edge_runtime.uplink_rate_file import MAX_FILE_BYTES, RATE_FILE_IGNORED
from fedge.edge_runtime.upload_margin import UploadLink, update_bytes, upload_margin_s
from tests.edge_runtime.one_device import DEVICE, one_device
from tests.edge_runtime.test_uplink_rate import CONFIGURED, LATENCY, LEARNING, _task, _train_and_ack
from tests.tiny_model import build_tiny_model

TOOK = [3.0, 6.0, 2.0, 4.0, 9.0, 1.5, 2.5, 7.0, 3.5, 5.0]  # publish-to-Ack seconds of ten uploads


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _uplink(path, link: UploadLink = LEARNING) -> Uplink:
    return Uplink(DEVICE, None, None, 10.0, 3600.0, link, rate_path=path)


def _learn(uplink: Uplink, sizes: list[int], envelope: int = 235) -> list[float]:
    """Each size timed by TOOK; the observed rates (all past the 50 ms floor: no censoring)."""
    for i, (size, took) in enumerate(zip(sizes, TOOK, strict=False)):
        uplink.rate.sent(f"u{i}", size, 100.0 * i, size - envelope)
        uplink.acked(100.0 * i + took, f"u{i}")
    return [size / (took - LATENCY) for size, took in zip(sizes, TOOK, strict=False)]


def _lower_quartile(rates: list[float]) -> float:
    """By hand: the last 8, sorted, nearest rank (n - 1) // 4 (uplink_rate.py)."""
    window = sorted(rates[-8:])
    return window[(len(window) - 1) // 4]


@pytest.mark.parametrize("uploads", [3, 4, 10])
def test_a_restarted_uplink_uses_the_rate_it_learned_at_once(tmp_path, uploads):
    path = tmp_path / UPLINK_RATE_FILE
    sizes = [40_000 + 1_000 * i for i in range(uploads)]
    rates = _learn(_uplink(path), sizes, envelope=300)
    restarted = _uplink(path)
    assert list(restarted.rate.observations) == pytest.approx(rates[-8:], rel=1e-15)
    assert restarted.rate.bytes_per_s == _lower_quartile(rates)
    assert restarted.rate.margin_envelope_bytes == 300
    assert restarted.rate.bytes_per_s != CONFIGURED  # learned, not the configured start


def test_a_restarted_device_uses_the_learned_margin_at_once(model, tmp_path):
    clock = ManualClock()
    guess = UploadLink(LATENCY, 10_000.0, learn_rate=True)  # the test model's update message is about 650 bytes
    agent, coord = one_device(model, tmp_path, clock=clock, upload_link=guess)
    before = DURABLE_WRITES.snapshot()
    sent = [_train_and_ack(model, agent, coord, clock, f"t{i}", s) for i, s in enumerate(TOOK[:4])]
    after = DURABLE_WRITES.snapshot()
    # the file is written at each Ack, without fsync: a task still costs its two durable writes
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"staged-.npz": 4, "r-.msg": 4}
    assert (tmp_path / DEVICE / UPLINK_RATE_FILE).is_file()

    restarted, _ = one_device(model, tmp_path, clock=ManualClock(), upload_link=guess)
    rates = [b / (s - LATENCY) for (_, b), s in zip(sent, TOOK, strict=False)]
    last, last_bytes = sent[-1]
    envelope = last_bytes - len(last.payload) - len(last.control)
    task = _task(model, "probe")
    assert restarted.uplink.margin_s(task) == pytest.approx(
        LATENCY + (update_bytes(task) + envelope) / _lower_quartile(rates), rel=1e-12)
    assert restarted.uplink.margin_s(task) > 2 * upload_margin_s(task, guess)


def _written(tmp_path) -> dict:
    """A file as the device writes it, after four timed uploads."""
    path = tmp_path / "learned" / UPLINK_RATE_FILE
    _learn(_uplink(path), [50_000, 60_000, 70_000, 80_000])
    return json.loads(path.read_text())


def _hostile(body: dict, case: str) -> bytes:
    edits = {
        "nan": {"observations": [math.nan, 1e4, 1e4]},
        "inf": {"observations": [math.inf, 1e4, 1e4]},
        "negative": {"observations": [-1e4, 1e4, 1e4]},
        "zero": {"observations": [0.0, 1e4, 1e4]},
        "string rate": {"observations": ["1e4", 1e4, 1e4]},
        "bool rate": {"observations": [True, 1e4, 1e4]},
        "too many": {"observations": [1e4] * 9},
        "not a list": {"observations": {"a": 1e4}},
        "no observations": {"observations": None},
        "envelope negative": {"envelope_bytes": -1},
        "envelope float": {"envelope_bytes": 235.0},
        "envelope huge": {"envelope_bytes": 10**12},
        "configured a string": {"upload_bytes_per_s": str(CONFIGURED)},
        "latency nan": {"upload_latency_s": math.nan},
        "huge int": {"observations": [10**300, 1e4, 1e4]},  # float() would overflow
    }
    if case in edits:
        return json.dumps({**body, **edits[case]}).encode()
    return {
        "empty": b"",
        "not json": b"\x00\xff garbage",
        "a list": json.dumps([body]).encode(),
        "nested deep": b"[" * 3_000,  # under the cap: json's RecursionError
        "over the cap": json.dumps(body).encode() + b" " * MAX_FILE_BYTES,  # valid JSON, too big to be ours
    }[case]


HOSTILE = ["nan", "inf", "negative", "zero", "string rate", "bool rate", "too many", "not a list", "no observations",
           "envelope negative", "envelope float", "envelope huge", "configured a string", "latency nan", "empty",
           "not json", "a list", "nested deep", "huge int", "over the cap"]


@pytest.mark.parametrize("case", HOSTILE)
def test_a_damaged_or_hostile_file_is_ignored_with_one_log_line(tmp_path, caplog, case):
    path = tmp_path / UPLINK_RATE_FILE
    path.write_bytes(_hostile(_written(tmp_path), case))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fedge.agent"):
        uplink = _uplink(path)
    assert list(uplink.rate.observations) == [] and uplink.rate.envelope_bytes == 0
    assert uplink.rate.bytes_per_s == CONFIGURED
    assert [r.levelno for r in caplog.records if RATE_FILE_IGNORED in r.getMessage()] == [logging.WARNING]
    assert len(caplog.records) == 1


def test_the_untouched_file_of_the_hostile_cases_is_restored(tmp_path):
    """The oracle the cases above differ from by one edit each."""
    path = tmp_path / UPLINK_RATE_FILE
    path.write_bytes(json.dumps(_written(tmp_path)).encode())
    assert len(_uplink(path).rate.observations) == 4


@pytest.mark.parametrize("case", ["missing", "a folder", "a fifo"])
def test_a_missing_or_odd_path_is_ignored_and_the_device_still_starts(tmp_path, caplog, case):
    path = tmp_path / UPLINK_RATE_FILE
    if case == "a folder":
        path.mkdir()
    elif case == "a fifo":
        os.mkfifo(path)  # open() would block the start
    with caplog.at_level(logging.INFO, logger="fedge.agent"):
        uplink = _uplink(path)
    assert uplink.rate.bytes_per_s == CONFIGURED and not uplink.rate.observations
    assert len([r for r in caplog.records if RATE_FILE_IGNORED in r.getMessage()]) == 1
    _learn(uplink, [50_000] * 3)  # a write that fails (a folder in the way) is logged, never raised
    assert uplink.rate.bytes_per_s == _lower_quartile([50_000 / (t - LATENCY) for t in TOOK[:3]])


@pytest.mark.parametrize("changed", [{"bytes_per_s": 2 * CONFIGURED}, {"latency_s": 2 * LATENCY},
                                     {"bytes_per_s": CONFIGURED + 1e-9}])
def test_a_window_learned_under_another_configured_rate_or_latency_is_discarded(tmp_path, caplog, changed):
    path = tmp_path / UPLINK_RATE_FILE
    _learn(_uplink(path), [50_000, 60_000, 70_000])
    assert len(_uplink(path).rate.observations) == 3  # the same configuration restores it
    link = replace(LEARNING, **changed)
    with caplog.at_level(logging.INFO, logger="fedge.agent"):
        uplink = _uplink(path, link)
    assert not uplink.rate.observations and uplink.rate.bytes_per_s == link.bytes_per_s
    (line,) = [r.getMessage() for r in caplog.records]
    assert "another upload_bytes_per_s or upload_latency_s" in line


def test_learning_off_neither_reads_nor_writes_the_file(model, tmp_path, caplog):
    clock = ManualClock()
    home = tmp_path / DEVICE
    home.mkdir()
    kept = _written(tmp_path)
    (home / UPLINK_RATE_FILE).write_text(json.dumps(kept))
    with caplog.at_level(logging.INFO, logger="fedge.agent"):
        agent, coord = one_device(model, tmp_path, clock=clock, upload_link=UploadLink(LATENCY, CONFIGURED))
        for i in range(3):
            _train_and_ack(model, agent, coord, clock, f"t{i}", 30.0)
    assert json.loads((home / UPLINK_RATE_FILE).read_text()) == kept
    assert not [r for r in caplog.records if UPLINK_RATE_FILE in r.getMessage()]
    assert agent.uplink.margin_s(_task(model, "p")) == upload_margin_s(_task(model, "p"), UploadLink(LATENCY,
                                                                                                     CONFIGURED))
    (home / UPLINK_RATE_FILE).unlink()
    agent, coord = one_device(model, tmp_path / "off", clock=clock, upload_link=UploadLink(LATENCY, CONFIGURED))
    for i in range(3):
        _train_and_ack(model, agent, coord, clock, f"t{i}", 30.0)
    assert not (tmp_path / "off" / DEVICE / UPLINK_RATE_FILE).exists()


def test_only_kept_rates_slower_than_the_configured_one_are_restored(tmp_path):
    """The review's case: a window learned on a LAN (10 MB/s) restored after a reboot onto a slow link
    gave the first tasks a margin of a fraction of a second. A kept rate is believed only where it
    makes the margin larger than the configured guess; faster ones are relearned."""
    path = tmp_path / UPLINK_RATE_FILE
    fast, slow = [CONFIGURED * 80] * 5, [CONFIGURED / 4, CONFIGURED / 2, CONFIGURED]
    path.write_text(json.dumps({"upload_bytes_per_s": CONFIGURED, "upload_latency_s": LATENCY,
                                "observations": fast + slow, "envelope_bytes": 200}))
    restarted = _uplink(path)
    assert list(restarted.rate.observations) == slow
    assert restarted.rate.bytes_per_s == _lower_quartile(slow)  # learned from the slower three at once

    path.write_text(json.dumps({"upload_bytes_per_s": CONFIGURED, "upload_latency_s": LATENCY,
                                "observations": fast, "envelope_bytes": 200}))
    assert _uplink(path).rate.bytes_per_s == CONFIGURED  # all faster: the configured guess until relearned

