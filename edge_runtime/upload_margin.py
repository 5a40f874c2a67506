"""How long before its deadline a task's training stops, so that its update lands in time.

The coordinator refuses an update that comes at or past its task's deadline (stale_round, in
sync and async mode alike) and counts that deadline from when it sent the task; the device
counts the task's deadline_s from when the task arrived, so its deadline falls later than the
coordinator's by the task's own trip down. A device that trained until its own deadline (as it
did before this margin) finished with no time left for the upload: an update done just before
it arrived late and was refused, its training thrown away, its device resting as if it had let
the task expire. Training now stops `margin` seconds before the deadline (task.py): an update
finished by then is sent; a task still training then is declined as `aborted:deadline`, as a
straggler always was (no partial update is ever sent), only sooner, freeing its slot sooner.

The margin is an estimate of the upload, from the link and the update's size, not a fraction of
the task's budget: how long an upload takes depends on its bytes and the link, not on how long
the coordinator allows (a tenth of the default 600 s would be a minute of training thrown away
for a 100 kB update, and a tenth of a 30 s deadline too little for a large one on a slow link).

    margin = latency_s + update bytes / bytes_per_s,  at most half the task's deadline_s

latency_s ([agent] upload_latency_s, 1 s): the task's trip down, the update's trip up through
the broker and its wait in the coordinator's queue, and the step, the compression and the
journal's durable write that end training after the last check. bytes_per_s ([agent]
upload_bytes_per_s, 125,000: 1 Mbit/s, a weak Wi-Fi or cellular uplink). The update's bytes are
estimated from the task itself: its shared params (and SCAFFOLD's c) as dense fp32, times the
task's compression: quant_bits of each value kept, top-k keeping topk_fraction of them, each with
its index's gap as a varint (1 byte while top-k keeps more than 1 value in 128). Within 3% of the
encoder's output on 300,000 values (tests/edge_runtime/test_upload_margin.py); per-tensor headers
are left out, which only matters for updates of a few kB, where the latency dominates anyway.

At most half the budget: a task whose deadline_s is shorter than twice the estimate still trains
for half of it rather than being declined. The estimate is a configured guess, and a coordinator
that sets a short deadline may well know its link is fast (a broker on the same board or LAN
carries a small update in milliseconds): declining on the guess would refuse every task of such
a fleet, where training half the budget keeps it working, and an update that still lands late is
refused by name (stale_round) as before. Inputs that come with less than the margin left are
declined as `no_time_to_upload` (task.py) instead of trained to be thrown away.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .kernel.errors import ConfigError
from .kernel.protocol import TrainTask

NO_TIME_TO_UPLOAD = "no_time_to_upload"  # decline reason: the inputs came with less than the margin left
MAX_BUDGET_SHARE = 0.5  # the margin never takes more of a task's deadline_s than this


@dataclass(frozen=True)
class UploadLink:
    """What the device assumes of its uplink ([agent] upload_latency_s, upload_bytes_per_s)."""

    latency_s: float = 1.0
    bytes_per_s: float = 125_000.0

    def __post_init__(self) -> None:
        if not 0 <= self.latency_s < math.inf:  # also refuses NaN
            raise ConfigError(f"agent.upload_latency_s must be a finite number of seconds >= 0, got "
                              f"{self.latency_s!r}")
        if not 0 < self.bytes_per_s < math.inf:
            raise ConfigError(f"agent.upload_bytes_per_s must be a positive number, got {self.bytes_per_s!r}")


def update_bytes(task: TrainTask) -> float:
    """About how many bytes the task's update takes on the wire (module docstring)."""
    spec, values = task.compression, (len(task.params) + len(task.correction)) / 4  # dense fp32
    if spec.topk_fraction >= 1:
        return values * spec.quant_bits / 8
    # update_codec's gap-coded indices: a LEB128 varint of the gap to the last kept value, 7 bits a byte
    gap_bytes = max(1, math.ceil(math.log2(1 / spec.topk_fraction) / 7))
    return values * spec.topk_fraction * (spec.quant_bits / 8 + gap_bytes)


def upload_margin_s(task: TrainTask, link: UploadLink) -> float:
    """Seconds before the task's deadline that its training stops (module docstring)."""
    estimate = link.latency_s + update_bytes(task) / link.bytes_per_s
    return min(estimate, MAX_BUDGET_SHARE * task.deadline_s)
