"""Chunking: split/reassemble round trips in any order, with repeats, and every refusal path."""

from __future__ import annotations

import random

import pytest

from fedge.edge_runtime.kernel.errors import PayloadTooLarge
from fedge.edge_runtime.kernel.transport.backoff import Backoff
from fedge.edge_runtime.kernel.transport.chunks import (
    CHUNK_HEADER_SIZE,
    ChunkMemoryFull,
    MalformedChunk,
    Reassembler,
    is_chunk,
    split_message,
)


@pytest.mark.parametrize("size", [0, 1, 99, 100, 101, 5000])
def test_round_trip_in_any_order_with_redeliveries(size):
    rng = random.Random(size)
    payload = rng.randbytes(size)
    frames = split_message(payload, CHUNK_HEADER_SIZE + 100)
    assert len(frames) == max(1, -(-size // 100))
    assert all(is_chunk(f) and len(f) <= CHUNK_HEADER_SIZE + 100 for f in frames)
    shuffled = frames + frames[: len(frames) // 2]  # QoS 1 may deliver a chunk twice
    rng.shuffle(shuffled)
    r = Reassembler()
    out = [r.feed("t", f, 0.0) for f in shuffled]
    done = [o for o in out if o is not None]
    assert done == [payload]
    assert r.pending_sets == 0  # late repeats of a finished message open nothing


def test_interleaved_messages_on_two_topics_stay_apart():
    a, b = b"a" * 1000, b"b" * 1000
    fa, fb = split_message(a, 166), split_message(b, 166)
    r = Reassembler()
    got = []
    for x, y in zip(fa, fb):
        got += [r.feed("devices/A", x, 0), r.feed("devices/B", y, 0)]
    assert [g for g in got if g] == [a, b]


def test_corrupted_chunk_fails_the_digest():
    frames = split_message(b"x" * 500, 166)
    bad = frames[1][:-1] + bytes([frames[1][-1] ^ 1])
    r = Reassembler()
    for f in [frames[0], bad] + frames[2:-1]:
        assert r.feed("t", f, 0) is None
    with pytest.raises(MalformedChunk, match="sha256"):
        r.feed("t", frames[-1], 0)
    assert r.pending_sets == 0


def test_inconsistent_and_truncated_frames_are_refused():
    r = Reassembler()
    with pytest.raises(MalformedChunk, match="shorter"):
        r.feed("t", b"FDGC" + b"\0" * 10, 0)
    frames = split_message(b"y" * 500, 166, message_id=b"k" * 16)
    other = split_message(b"z" * 900, 166, message_id=b"k" * 16)  # same id, different set
    r.feed("t", frames[0], 0)
    with pytest.raises(MalformedChunk, match="disagrees"):
        r.feed("t", other[1], 0)
    assert r.pending_sets == 0


def test_size_limits_and_expiry_bound_memory():
    r = Reassembler(max_message_bytes=1000, max_pending_bytes=1500, expiry_s=10)
    with pytest.raises(PayloadTooLarge):
        r.feed("t", split_message(b"q" * 1001, 166)[0], 0)
    # Memory counts stored bytes: a set that declares 10 bytes cannot carry 100.
    liar = bytearray(split_message(b"q" * 10, 166)[0])
    with pytest.raises(MalformedChunk, match="more than its set declared"):
        r.feed("t", bytes(liar) + b"x" * 90, 0)
    # One sender opening many sets evicts its own oldest, never another sender's.
    r.feed("u", split_message(b"u" * 900, 166)[0], 0)  # 100 bytes held for u
    for i in range(12):
        r.feed("t", split_message(bytes([i]) * 900, 166)[0], i * 0.1)
    assert r.pending_sets <= 11 and ("u" in {k[0] for k in r._sets})
    # All senders together are bounded too.
    with pytest.raises(ChunkMemoryFull, match="all senders"):
        for i in range(20):
            r.feed(f"v{i}", split_message(b"v" * 900, 166)[0], 1)
    assert r.expire(5) == 0 and r.expire(12) > 0 and r.pending_sets == 0
    assert r.feed("u", split_message(b"q" * 10, 166)[0], 12) == b"q" * 10


def test_one_sender_has_one_share_across_its_channels():
    # A device cannot multiply its share by opening sets on its checkin, fetch and status topics.
    r = Reassembler(max_message_bytes=1000, max_pending_bytes=100_000)
    dev = "fedge/v1/devices/x"
    for i in range(40):
        r.feed(f"{dev}/{('update', 'checkin', 'fetch', 'status')[i % 4]}", split_message(bytes([i]) * 900, 166)[0], i)
        assert r.sender_bytes(f"{dev}/update") <= 1000
    assert r.pending_bytes <= 1000 and r.dropped["chunks_evicted"] == 40 - r.pending_sets
    whole = b"w" * 900
    frames = split_message(whole, 166)
    assert [r.feed(f"{dev}/update", f, 50) for f in frames][-1] == whole  # its own sets give way to a new one


def test_flooding_senders_cannot_starve_another_when_memory_is_full():
    r = Reassembler(max_message_bytes=1000, max_pending_bytes=3000)
    for i in range(60):  # three flooders fill the global bound, each to its share
        r.feed(f"dev/{'abd'[i % 3]}/update", split_message(bytes([i]) * 900, 166)[0], i)
    assert r.pending_bytes == 3000
    whole = b"c" * 600  # below the fair share (3000 / 4 senders)
    got = [r.feed("dev/c/update", f, 40) for f in split_message(whole, 166)]
    assert got[-1] == whole  # room was taken from the biggest holders, never refused
    assert r.pending_bytes <= 3000 and r.dropped["chunks_evicted"] > 0
    # Once nobody holds more than the newcomer would, a new set is refused by name.
    small = Reassembler(max_message_bytes=1000, max_pending_bytes=300)
    for i in range(3):
        small.feed(f"dev/{i}/update", split_message(b"s" * 900, 166)[0], 0)
    with pytest.raises(ChunkMemoryFull) as info:
        small.feed("dev/9/update", split_message(b"s" * 900, 166)[0], 0)
    assert info.value.reason == "chunk_memory_full" and small.pending_bytes == 300


def test_backoff_is_jittered_and_bounded():
    b = Backoff(0.5, 8.0)
    rng = random.Random(1)
    delays = [[b.delay(a, rng) for _ in range(200)] for a in range(8)]
    assert all(0.25 <= d <= 8.0 for row in delays for d in row)
    assert all(0.25 <= d <= 0.5 for d in delays[0])  # the first retry: between min_s/2 and min_s
    assert max(delays[7]) > 4.0 and len({round(d, 6) for d in delays[7]}) > 150  # spread, not lockstep


def test_first_retry_is_jittered_so_a_fleet_does_not_reconnect_in_lockstep():
    # After a broker restart every device is at attempt 0: the first delay must differ per device.
    b = Backoff(0.5, 30.0)
    firsts = [b.delay(0, random.Random(seed)) for seed in range(100)]
    assert all(0.25 <= d <= 0.5 for d in firsts)
    assert len({round(d, 6) for d in firsts}) > 90
    assert max(firsts) - min(firsts) > 0.2  # spread over most of the window


def test_transport_jitters_the_delay_it_gives_paho_after_a_reset():
    from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
    from fedge.edge_runtime.kernel.transport.settings import MqttSettings

    delays = set()
    for seed in range(5):
        t = MqttTransport(f"c{seed}", MqttSettings(), rng=random.Random(seed))  # connect_async: no I/O yet
        t._attempt = 0
        t._set_next_delay()  # what _on_connect does after a successful (re)connect
        delays.add(t._client._reconnect_min_delay)
        assert 0.25 <= t._client._reconnect_min_delay <= 0.5
    assert len(delays) == 5


def test_a_sender_keeps_at_most_its_share_of_incomplete_sets_whatever_their_size():
    """Bytes alone let one-byte sets pile up (650 bytes of bookkeeping each, a million of them
    623 MiB counted as 1 MB). A sender that starts one set too many loses its own oldest."""
    from fedge.edge_runtime.kernel.transport.chunks import MAX_SETS_PER_SENDER

    r = Reassembler(max_message_bytes=1 << 20, max_pending_bytes=1 << 24)
    r.feed("fedge/v1/devices/other/update", split_message(b"o" * 10, CHUNK_HEADER_SIZE + 5)[0], 0)
    firsts = [split_message(bytes([i % 256]) * 10, CHUNK_HEADER_SIZE + 5) for i in range(MAX_SETS_PER_SENDER + 5)]
    for i, frames in enumerate(firsts):
        assert r.feed("fedge/v1/devices/pi/update", frames[0], i) is None
    assert r.pending_sets == MAX_SETS_PER_SENDER + 1  # pi's newest, and the other sender's one
    assert r.dropped["chunks_evicted"] == 5
    assert r.feed("fedge/v1/devices/pi/update", firsts[-1][1], 99) == bytes([(MAX_SETS_PER_SENDER + 4) % 256]) * 10
    assert r.feed("fedge/v1/devices/pi/update", firsts[0][1], 99) is None  # the oldest went: its set starts anew
    assert r.feed("fedge/v1/devices/other/update", split_message(b"o" * 10, CHUNK_HEADER_SIZE + 5)[1], 99) is None
