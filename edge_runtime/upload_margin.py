"""How long before its deadline a task's training stops, so that its update lands in time.

The coordinator refuses an update that comes at or past its task's deadline (stale_round, in
sync and async mode alike) and counts that deadline from when it sent the task; the device
counts the task's deadline_s from when the task arrived, so its deadline falls later than the
coordinator's by the task's own trip down. A device that trained until its own deadline (as it
did before this margin) finished with no time left for the upload: an update done just before
it arrived late and was refused, its training thrown away, its device resting as if it had let
the task expire. Training now stops `margin` seconds before the deadline (task.py; a
secure-aggregation round's too, below): an update
finished by then is sent; a task still training then is declined as `aborted:deadline`, as a
straggler always was (no partial update is ever sent), only sooner, freeing its slot sooner.

The margin is an estimate of the upload, from the link and the update's size, not a fraction of
the task's budget: how long an upload takes depends on its bytes and the link, not on how long
the coordinator allows (a tenth of the default 600 s would be a minute of training thrown away
for a 100 kB update, and a tenth of a 30 s deadline too little for a large one on a slow link).

    margin = latency_s + update bytes / bytes_per_s,  at most half the task's deadline_s

latency_s ([agent] upload_latency_s, 1 s): the update's trip up through the broker and its wait in
the coordinator's queue, and the step, the compression and the journal's durable write that end
training after the last check. bytes_per_s ([agent] upload_bytes_per_s, 125,000: 1 Mbit/s, a weak
Wi-Fi or cellular uplink), learned by default in the device config ([agent] learn_upload_rate = true; uplink_rate.py):
each update's first send is timed to the coordinator's Ack, one observation being bytes /
(elapsed - latency_s) (the message's envelope, ids and metrics, added once the rate is learned), and
after 3 of them the rate is the lower quartile of the last 8, within [configured / 100, configured
x 100]; false keeps the configured rate. The update's bytes are estimated from the task itself,
tensor by tensor from its params frame's headers (and SCAFFOLD's c), as compress.py and
update_codec make them: k = max(1, ceil(topk_fraction x size)) values kept (dense when that is
all), quant_bits each, the tensor's header, and for a sparse tensor a LEB128 varint gap per value,
whose expected length is 1 + sum_j (1 - k/size)^(128^j), j = 1..4 (varint_bytes: 1.00 byte at
top-10%, 1.28 at 1%, 1.37 at 1/128, 1.77 at 0.2%, 5 at most; computed without overflow for any
share > 0). Within 3% of the encoder's output on every case
tests/edge_runtime/test_upload_margin.py tries (3 x 100,000 values at 32, 8 and 4 bits, top-k from
1 down to 0.002, 1/128 included; 60 small tensors; the two-tensor test model). Params that are not
a readable frame are taken as fp32 values, 4 bytes each.

What the margin does not cover. The device counts deadline_s from when the whole task arrived
(agent._received, set once the task message is complete), the coordinator from when it sent it:
the task's own download (its params travel inline as dense fp32, in sync mode unless
model_part_bytes is set and in async mode always) and any time the task waited queued in the
broker (a device offline with a persistent session gets it when it reconnects) come off the
coordinator's deadline and not the device's, and neither is estimated here: nothing but
latency_s stands for them. A task that took longer than that to come down can still bring an
update that lands late and is refused (stale_round); an operator who knows the downlink is slow
raises upload_latency_s.

A secure-aggregation round counts deadline_s from the task's arrival too (secagg_intake.py, by
task.py's rule), but what must land by that deadline is not an update: it is the KeyAdvertisement
the device answers with once trained (the coordinator's advertise stage closes at the round's
deadline; an advertisement after it leaves the device out of the cohort, its training thrown
away). Its margin is latency_s + advertisement_bytes / bytes_per_s (the learned rate when learned;
the bytes exact, the whole message: about 250 to 300 with its ids, 64 more signed). The round's bulky
upload, the masked input (field_bits per sent coordinate: ceil(d m / 8) bytes, and its envelope),
goes two stages later, in answer to the ShareDelivery, under mask_deadline_s counted from that
stage's start (stage_deadline_s, 60 s, unless set): no margin covers it, as training is long over
by then, and on a slow link the operator sets mask_deadline_s above latency + its bytes / rate.

At most half the budget: a task whose deadline_s is shorter than twice the estimate still trains
for half of it rather than being declined. The estimate is a guess (configured, or learned from
uploads of other sizes at other times), and a coordinator
that sets a short deadline may well know its link is fast (a broker on the same board or LAN
carries a small update in milliseconds): declining on the guess would refuse every task of such
a fleet, where training half the budget keeps it working, and an update that still lands late is
refused by name (stale_round) as before. Inputs that come with less than the margin left are
declined as `no_time_to_upload` (task.py) instead of trained to be thrown away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .kernel.codec import encode_message
from .kernel.errors import CodecError, ConfigError
from .kernel.protocol import TrainTask
from .kernel.secagg.messages import KEY_BYTES, SIGNATURE_BYTES, KeyAdvertisement
from .kernel.update_codec import FRAME_OVERHEAD, frame_shapes, payload_bytes, tensor_header_bytes

NO_TIME_TO_UPLOAD = "no_time_to_upload"  # decline reason: the inputs came with less than the margin left
MAX_BUDGET_SHARE = 0.5  # the margin never takes more of a task's deadline_s than this


@dataclass(frozen=True)
class UploadLink:
    """What the device assumes of its uplink ([agent] upload_latency_s, upload_bytes_per_s,
    learn_upload_rate)."""

    latency_s: float = 1.0
    bytes_per_s: float = 125_000.0  # configured; with learn_rate, the start and the clamp's centre
    # Learn the rate from timed uploads (uplink_rate.py). Off for a link built in code: the
    # in-memory simulator's clock does not move while a message travels. The device config's
    # [agent] learn_upload_rate turns it on by default.
    learn_rate: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.latency_s < math.inf:  # also refuses NaN
            raise ConfigError(f"agent.upload_latency_s must be a finite number of seconds >= 0, got "
                              f"{self.latency_s!r}")
        if not 0 < self.bytes_per_s < math.inf:
            raise ConfigError(f"agent.upload_bytes_per_s must be a positive number, got {self.bytes_per_s!r}")
        if not isinstance(self.learn_rate, bool):
            raise ConfigError(f"agent.learn_upload_rate must be true or false, got {self.learn_rate!r}")


def varint_bytes(kept_share: float) -> float:
    """Expected bytes of one gap's LEB128 varint when top-k keeps this share of a tensor's entries
    at random places: a gap g (the entries skipped since the last kept one) is about geometric,
    P(g >= m) = (1 - share)^m, and its varint takes a byte more past each 128^j, 5 at most:
    1 + sum_j P(g >= 128^j), j = 1..4. Computed as exp(m * log1p(-share)): no power of
    1/share, so a share as small as 1e-310 gives 5 bytes, not an OverflowError."""
    if kept_share >= 1:  # every entry kept: gaps of 0
        return 1.0
    log_miss = math.log1p(-kept_share)
    return 1.0 + sum(math.exp(128.0**j * log_miss) for j in range(1, 5))


def _tensor_bytes(name: str, shape: tuple[int, ...], bits: int, topk_fraction: float) -> float:
    """What compress.py and update_codec make of one tensor: k = max(1, ceil(f * size)) kept values
    (dense when that is all of them), bits each, and for a sparse tensor a varint gap each."""
    size = math.prod(shape)
    kept = max(1, math.ceil(topk_fraction * size * (1 - 1e-12)))  # compress._compress_one's k
    sparse = topk_fraction < 1 and kept < size
    kept = kept if sparse else size
    payload = payload_bytes(bits, kept)  # CompressionSpec holds quant_bits to 32, 8 or 4
    gaps = kept * varint_bytes(kept / size) if sparse else 0.0
    return tensor_header_bytes(name, len(shape), sparse) + payload + gaps


def update_bytes(task: TrainTask) -> float:
    """About how many bytes the task's update takes on the wire (module docstring)."""
    spec, frames = task.compression, [f for f in (task.params, task.correction) if f]
    try:
        tensors = [tensor for frame in frames for tensor in frame_shapes(frame)]
        return FRAME_OVERHEAD * len(frames) + sum(
            _tensor_bytes(name, shape, spec.quant_bits, spec.topk_fraction) for name, shape in tensors)
    # not a frame we can read (or shapes past what a float holds, which decode refuses anyway):
    # every byte taken as one fp32 value's share; an estimate must never stop the agent's loop
    except (CodecError, OverflowError, ValueError):
        values = sum(map(len, frames)) / 4
        gap = varint_bytes(spec.topk_fraction) if spec.topk_fraction < 1 else 0.0
        return values * spec.topk_fraction * (spec.quant_bits / 8 + gap)


def advertisement_bytes(task: TrainTask, device_id: str, signed: bool) -> int:
    """The bytes of the KeyAdvertisement device `device_id` answers a secure round's task with once
    trained: exact, since only its keys (32 bytes each), model hash (64 hex digits) and signature
    (64 bytes, or none from a device without an identity key) are unknown before training."""
    placeholder = KeyAdvertisement(device_id, task.round_id, task.task_id, bytes(KEY_BYTES), bytes(KEY_BYTES),
                                   "0" * 64, bytes(SIGNATURE_BYTES) if signed else b"")
    return len(encode_message(placeholder))


def margin_for_bytes(upload_bytes: float, deadline_s: float, link: UploadLink) -> float:
    """latency_s + upload_bytes / bytes_per_s, at most MAX_BUDGET_SHARE of deadline_s (module docstring)."""
    return min(link.latency_s + upload_bytes / link.bytes_per_s, MAX_BUDGET_SHARE * deadline_s)


def upload_margin_s(task: TrainTask, link: UploadLink, envelope_bytes: float = 0.0) -> float:
    """Seconds before the task's deadline that its training stops (module docstring);
    envelope_bytes: the message's own bytes beyond its frames, when the rate is learned (uplink_rate.py)."""
    return margin_for_bytes(update_bytes(task) + envelope_bytes, task.deadline_s, link)
