"""Shard topics on the device side: TrainTask.shard / Update.shard stay off the wire unless set
(devices built before them refuse unknown fields), the shard topic names, and the uplink
publishing (and resending) an Update where its task's shard says."""

from __future__ import annotations

import msgpack
import pytest

from fedge.edge_runtime.journal import DeviceJournal
from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, decode_message, encode_message
from fedge.edge_runtime.kernel.errors import MalformedPayload
from fedge.edge_runtime.uplink import Uplink


def _body(frame: bytes) -> dict:
    return msgpack.unpackb(frame[HEADER_SIZE:-4], raw=False)


def _update(shard: int = -1) -> p.Update:
    return p.Update(device_id="d1", round_id=3, task_id="t", update_id="u", model_id="m", base_version=2,
                    num_examples=5, payload=b"xyz", shard=shard)


def test_unsharded_frames_are_what_older_builds_sent():
    task = p.TrainTask(round_id=1, task_id="t", device_id="d1", model_id="m", model_version=0, params=b"")
    assert "shard" not in _body(encode_message(task))
    assert "shard" not in _body(encode_message(_update()))
    assert decode_message(encode_message(task)).shard == -1


@pytest.mark.parametrize("shard", [0, 7, p.MAX_SHARDS - 1])
def test_a_shard_round_trips(shard):
    frame = encode_message(_update(shard))
    assert _body(frame)["shard"] == shard
    assert decode_message(frame) == _update(shard)


def test_a_shard_out_of_range_is_refused():
    with pytest.raises(MalformedPayload, match="shard"):
        encode_message(_update(p.MAX_SHARDS))


def test_shard_topic_names_and_parse():
    topic = p.shard_update_topic(3, "pi-7")
    assert topic == "fedge/v1/shard/3/devices/pi-7/update"
    assert p.shard_of(topic) == (3, "pi-7")
    assert p.device_of(topic) is None  # never mistaken for the plain update channel
    assert p.shard_updates_filter(3) == "fedge/v1/shard/3/devices/+/update"
    for bad in ("fedge/v1/devices/pi-7/update", "fedge/v1/shard/x/devices/pi-7/update",
                "fedge/v1/shard/3/devices//update", "fedge/v1/shard/3/devices/pi-7/checkin",
                f"fedge/v1/shard/{p.MAX_SHARDS}/devices/pi-7/update",
                "fedge/v1/shard/\u00b2/devices/pi-7/update",  # str.isdigit() says yes; int() raises
                "fedge/v1/shard/\u0663/devices/pi-7/update"):  # an Arabic-Indic 3: int() says 3
        assert p.shard_of(bad) is None
    with pytest.raises(ValueError):
        p.shard_update_topic(-1, "pi-7")
    with pytest.raises(ValueError):
        p.shard_update_topic(0, "a/b")


def test_uplink_sends_and_resends_to_the_tasks_shard(tmp_path):
    sent = []
    journal = DeviceJournal(tmp_path)
    uplink = Uplink("d1", journal, lambda *a: sent.append(a), republish_s=1.0, pending_max_age_s=100.0)
    sharded, plain = journal.keep(_update(2)), journal.keep(p.Update(**{**_update().__dict__, "update_id": "v"}))
    uplink.send_update(sharded, 0.0)
    uplink.send_update(plain, 0.0)
    assert sent == [("update", sharded, 2), ("update", plain)]
    sent.clear()
    assert uplink.resend_all(5.0) == 2
    assert sorted(sent, key=len) == [("update", plain), ("update", sharded, 2)]


def test_a_task_that_comes_again_naming_another_shard_moves_its_update_there(tmp_path):
    """The leader moved the device off a shard without a worker: the same update (same id, same
    payload) goes to the new shard, re-encoded to name it; other tasks' updates stay put."""
    sent = []
    journal = DeviceJournal(tmp_path)
    uplink = Uplink("d1", journal, lambda *a: sent.append(a), republish_s=1.0, pending_max_age_s=100.0)
    moved = journal.keep(_update(0))
    other = journal.keep(p.Update(**{**_update(0).__dict__, "update_id": "v", "task_id": "t2"}))
    uplink.send_update(moved, 0.0)
    uplink.retarget("t", 3)
    uplink.retarget("t2", 0)  # the same shard again: nothing changes
    sent.clear()
    assert uplink.resend_all(5.0) == 2
    by_id = {decode_message(frame).update_id: (frame, shard) for _, frame, shard in sent}
    assert by_id["v"] == (other, 0)
    frame, shard = by_id["u"]
    assert shard == 3 and decode_message(frame) == _update(3)  # only the shard differs
