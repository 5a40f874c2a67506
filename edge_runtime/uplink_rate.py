"""The device learns its upload rate from its own uploads instead of trusting `upload_bytes_per_s`.

The upload margin (upload_margin.py) is latency_s + update bytes / bytes_per_s. The configured
rate is a guess: on a LAN it throws training time away, on a slow cellular link it is too high
and updates land late (stale_round). Each update's first send is timed, from its publish to the
coordinator's Ack for it, on the agent's clock (monotonic on a board: a wall-clock jump cannot
make an upload take minutes or a negative time).

One observation: rate = bytes / (elapsed - latency_s), the bytes being the update message as
published. Subtracting latency_s makes the margin self-consistent: for an update of the same
size, the learned margin latency_s + bytes / rate is exactly the publish-to-Ack time seen.
Below TRANSFER_FLOOR_S (50 ms) of transfer (elapsed - latency_s) the time is within the
broker's round trip jitter and the agent loop's wake-up (poll_s, 0.2 s by default): the upload
fit in latency_s and says only that the link is at least bytes / floor fast. Such an observation
is censored: it counts as max(bytes / floor, configured), so a small update acked at once never
claims the link is slower than the configured guess (1 kB / 50 ms would say 20 kB/s).

Each update is timed from its FIRST send, across resends. An upload slower than republish_s
(10 s) is resent by the loop before its Ack comes; forgetting it then (as the first version did)
never timed the slow links this is for. When the Ack comes after resends, bytes / (elapsed since
the first send - latency_s) is a lower bound of the rate if the Ack answers the first copy, so
the error is conservative (a larger margin, still capped at half the deadline). A message the
broker lost yields one pessimistic reading (the time until a resend got through), which leaves
the window after WINDOW more uploads. Forgotten (`forget`): every timing in flight when the agent
runs blocking work (training a task, an evaluation or head refit) inside its loop, since an Ack
that came meanwhile waits in the queue and would be stamped after the work (an Ack behind a 60 s
training read as a 60 s upload and sank the estimate to the clamp), and on a reconnect (the time
offline is not the link's rate). The transport does not stamp arrival times, so the agent's
clock at handling is all there is. Secure-aggregation uploads and Declines are not timed.

The estimate: the lower quartile (nearest rank, sorted[(n - 1) // 4]) of the last WINDOW (8)
observations, once MIN_OBSERVATIONS (3) exist; until then the configured rate. A low quantile
rather than a mean: a slow upload is believed at once (with fewer than 5 observations the
quartile is the minimum; with 8, the second lowest), a fast outlier barely moves it, and a
slow one leaves the window after 8 more uploads. It is clamped to [configured / 100,
configured x 100] (CLAMP_FACTOR), so no run of absurd measurements can shrink the margin to
latency_s alone, and the transfer part of the margin stays at most 100 times the configured one.
That does not keep it under the half-deadline cap: at the floor (1,250 bytes/s for the default
125,000) an update of about 374 kB or more already takes 300 s, half the default 600 s deadline.

The margin estimates an update's frames (payload and SCAFFOLD's control, upload_margin.py), while
the link carries the whole message: its envelope (ids, metrics: about 235 bytes for the test
model's 413-byte frame) is remembered from the last timed send (`envelope_bytes`) and added to the
estimate once the rate is learned (MIN_OBSERVATIONS; before that the margin is the configured
one bit for bit, as with learning off), so a same-size update's margin is the time seen (without it a
648-byte message acked after 6 s gave a 4.2 s margin; under 1% apart past 25 kB).

The window (and the envelope) is kept in the device's state folder, written at each observation
and read at start (uplink_rate_file.py): a restarted device uses the rate it learned at once (its
kept rates at or below upload_bytes_per_s only: a board may be on a slower link after a reboot;
faster ones are relearned), unless upload_bytes_per_s or upload_latency_s changed since (then
it starts from the configured rate again, as it does when the file is missing or damaged).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence

log = logging.getLogger("fedge.agent")

TRANSFER_FLOOR_S = 0.05  # a transfer time below this is not measured (module docstring)
MIN_OBSERVATIONS = 3  # the configured rate is used until this many uploads were timed
WINDOW = 8  # the estimate is over the last this many observations
CLAMP_FACTOR = 100.0  # the learned rate stays within [configured / this, configured x this]
MAX_IN_FLIGHT = 64  # first sends remembered until their Ack (far above the agent's max_pending of 16)
RATE_CLAMPED = "upload_rate_clamped"  # logged when the observations put the estimate past the clamp


def observed_rate(sent_bytes: int, elapsed_s: float, latency_s: float, configured: float) -> float:
    """One upload's rate, bytes per second (module docstring: the floor and the censoring)."""
    transfer_s = elapsed_s - latency_s
    if not transfer_s > TRANSFER_FLOOR_S:  # also NaN
        return max(sent_bytes / TRANSFER_FLOOR_S, configured)
    return sent_bytes / transfer_s


def learned_rate(observations: Sequence[float], configured: float) -> float:
    """The lower quartile of the last WINDOW observations, clamped; `configured` until there are
    MIN_OBSERVATIONS of them."""
    if len(observations) < MIN_OBSERVATIONS:
        return configured
    recent = sorted(observations[-WINDOW:])
    low = recent[(len(recent) - 1) // 4]
    return min(max(low, configured / CLAMP_FACTOR), configured * CLAMP_FACTOR)


class UplinkRate:
    """Times each update's first send to its Ack and keeps the observations (the only state)."""

    def __init__(self, device_id: str, latency_s: float, configured: float):
        self.device_id = device_id
        self.latency_s = latency_s
        self.configured = configured  # bytes per second
        self.observations: deque[float] = deque(maxlen=WINDOW)
        self.in_flight: dict[str, tuple[int, float]] = {}  # update_id -> (bytes published, clock time)
        self.envelope_bytes = 0  # the last timed message's bytes beyond its frames (module docstring)

    @property
    def bytes_per_s(self) -> float:
        return learned_rate(list(self.observations), self.configured)

    @property
    def margin_envelope_bytes(self) -> int:
        """The envelope the margin adds: none until the rate is learned (module docstring)."""
        return self.envelope_bytes if len(self.observations) >= MIN_OBSERVATIONS else 0

    def sent(self, update_id: str, sent_bytes: int, now: float, frame_bytes: int = 0) -> None:
        """An update's first send: the message's bytes, of which `frame_bytes` its payload and control.
        A resend does not call this: the first send's time is kept until the Ack (module docstring)."""
        self.in_flight[update_id] = (sent_bytes, now)
        self.envelope_bytes = max(0, sent_bytes - frame_bytes)
        if len(self.in_flight) > MAX_IN_FLIGHT:
            self.in_flight.pop(next(iter(self.in_flight)))

    def forget(self) -> None:
        """Blocking work or a reconnect: an Ack handled after it does not tell the link's time."""
        self.in_flight.clear()

    def acked(self, update_id: str, now: float) -> bool:
        """The coordinator's Ack (accepted or not: either way the update arrived). True when it
        added an observation (the caller keeps the window: uplink_rate_file.py)."""
        first = self.in_flight.pop(update_id, None)
        if first is None:
            return False  # forgotten since, sent before a restart, or acked twice
        sent_bytes, sent_at = first
        elapsed_s = now - sent_at
        if not math.isfinite(elapsed_s):
            return False
        rate = observed_rate(sent_bytes, elapsed_s, self.latency_s, self.configured)
        self.observations.append(rate)
        learned = self.bytes_per_s
        clamped = learned in (self.configured / CLAMP_FACTOR, self.configured * CLAMP_FACTOR)
        log.info("device %s: update %s (%d bytes) acked %.3f s after its send: %.0f bytes/s; upload rate now %.0f "
                 "bytes/s (configured %.0f)%s", self.device_id, update_id, sent_bytes, elapsed_s, rate, learned,
                 self.configured, f" ({RATE_CLAMPED})" if clamped else "")
        return True
