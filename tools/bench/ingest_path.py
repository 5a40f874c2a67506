"""The in-process half of `fedge bench ingest`: the coordinator's decode -> validate ->
aggregate path alone, on one core, in bytes of Update messages per second.

`path` runs what the coordinator runs for each inbound update (validation.decode_report, then
admission.admit, then the round's aggregator) over a backlog of encoded messages. `stages`
runs the same functions one at a time, each on its own clock:

  frame_checks     the message frame (size, header, schema version, CRC32, msgpack, every
                   field's range), round/task/key checks, the update frame (header, CRC32,
                   tensor names, shapes, index ranges)
  digest           sha256 of the payload (the duplicate check and the store compare it)
  dequantize       int8/4-bit codes x scale into dense float32
  finite_and_norm  NaN/Inf check and the L2 norm (float64) against the bound
  accumulate       the aggregator's add (the streaming weighted sum, float64)

`np_add` adds the same dense float32 arrays with np.add, for scale: bytes of float32 added per
second. Each is timed on the wall clock and, beside it, on the thread's CPU clock. No I/O and
no broker here.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from fedge.coordinator.admission import Accepted, AdmissionView, admit
from fedge.coordinator.aggregate import MeanAggregator, UpdateMeta
from fedge.coordinator.validation import (
    RoundContext,
    check_current,
    check_finite_and_norm,
    check_model,
    check_not_seen,
    decode_report,
    payload_digest,
)
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import device_of
from fedge.edge_runtime.kernel.update_codec import decode_tensors

STAGES = ("frame_checks", "digest", "dequantize", "finite_and_norm", "accumulate")


def _view(ctx: RoundContext) -> AdmissionView:
    return AdmissionView(ctx, {}, lambda _device: True, lambda *_key: None)


def path_seconds(messages: list[tuple[str, bytes]], ctx: RoundContext, max_bytes: int,
                 clock=time.perf_counter) -> float:
    """Seconds for the coordinator's own path over every message (all must be accepted)."""
    view, aggregator = _view(ctx), MeanAggregator()
    started = clock()
    for topic, payload in messages:
        sender = device_of(topic)[0]
        verdict = admit(decode_report(payload, max_bytes), sender, view)
        if not isinstance(verdict, Accepted):
            raise RuntimeError(f"the benchmark update from {sender} was rejected: {verdict.reason}")
        aggregator.add(verdict.delta, UpdateMeta(verdict.device_id, float(verdict.num_examples)))
    return clock() - started


def stage_seconds(messages: list[tuple[str, bytes]], ctx: RoundContext, max_bytes: int,
                  clock=time.perf_counter) -> dict[str, float]:
    """The same path one stage at a time (module docstring); seconds per stage, all messages."""
    spent = dict.fromkeys(STAGES, 0.0)
    aggregator = MeanAggregator()
    for topic, payload in messages:
        sender = device_of(topic)[0]
        t0 = clock()
        update = decode_report(payload, max_bytes)
        check_current(update, ctx, sender)
        check_not_seen(update, {})
        check_model(update, ctx)
        tensors = decode_tensors(update.payload, expected=ctx.shapes)
        t1 = clock()
        payload_digest(update)
        t2 = clock()
        dense = decompress_update(tensors)
        t3 = clock()
        check_finite_and_norm(dense, ctx.norm_bound, "update")
        t4 = clock()
        aggregator.add(dense, UpdateMeta(update.device_id, float(update.num_examples)))
        t5 = clock()
        for stage, seconds in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            spent[stage] += seconds
    return spent


def np_add_seconds(messages: list[tuple[str, bytes]], ctx: RoundContext, max_bytes: int,
                   clock=time.perf_counter) -> tuple[float, int]:
    """(seconds, float32 bytes) for np.add of every message's dense delta into one sum."""
    arrays = [decompress_update(decode_tensors(decode_report(p, max_bytes).payload)) for _, p in messages]
    sums = {name: np.zeros_like(value) for name, value in arrays[0].items()}
    started = clock()
    for dense in arrays:
        for name, value in dense.items():
            np.add(sums[name], value, out=sums[name])
    elapsed = clock() - started
    return elapsed, sum(v.nbytes for dense in arrays for v in dense.values())


def measure(messages: list[tuple[str, bytes]], ctx: RoundContext, max_bytes: int, repeats: int = 3) -> dict:
    """Rates over `repeats` runs of each: bytes of Update messages per second (min, median)."""
    total = sum(len(p) for _, p in messages)
    # The CPU this thread got (time.thread_time), beside the wall clock: on a machine shared with
    # other work the wall clock also counts the time the thread waited for a core.
    cpu = [path_seconds(messages, ctx, max_bytes, time.thread_time) for _ in range(repeats)]
    cpu_stage_runs = [stage_seconds(messages, ctx, max_bytes, time.thread_time) for _ in range(repeats)]
    cpu_adds = [np_add_seconds(messages, ctx, max_bytes, time.thread_time)[0] for _ in range(repeats)]
    paths = [path_seconds(messages, ctx, max_bytes) for _ in range(repeats)]
    stage_runs = [stage_seconds(messages, ctx, max_bytes) for _ in range(repeats)]
    adds = [np_add_seconds(messages, ctx, max_bytes) for _ in range(repeats)]
    add_bytes = adds[0][1]
    stages = {s: statistics.median(run[s] for run in stage_runs) for s in STAGES}
    return {
        "aggregate_bytes_per_second": total / statistics.median(paths),
        "aggregate_bytes_per_second_best": total / min(paths),
        "aggregate_seconds_runs": [round(s, 5) for s in paths],
        "np_add_bytes_per_second": add_bytes / statistics.median(a[0] for a in adds),
        "np_add_bytes_per_second_best": add_bytes / min(a[0] for a in adds),
        "stages": {s: round(v, 5) for s, v in stages.items()},  # seconds over all messages (median run)
        "stages_bytes_per_second": {s: round(total / v) for s, v in stages.items() if v > 0},
        "aggregate_bytes_per_cpu_second": total / statistics.median(cpu),
        "aggregate_bytes_per_cpu_second_best": total / min(cpu),
        "np_add_bytes_per_cpu_second": add_bytes / statistics.median(cpu_adds),
        "stages_cpu": {s: round(statistics.median(run[s] for run in cpu_stage_runs), 5) for s in STAGES},
        "path_messages": len(messages),
        "path_message_bytes": total,
    }
