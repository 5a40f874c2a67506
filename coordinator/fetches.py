"""A device's FetchRequest: the model's artifact files, or (with a task id) its open task again
with the round's params inline, when it could not assemble the round's model from its parts."""

from __future__ import annotations

import logging

from fedge.edge_runtime.kernel.protocol import FetchRequest, device_topic

from .artifacts import ArtifactUnavailable, FetchRateLimited, FetchRefused, UnknownTask
from .metrics import CoordinatorMetrics
from .outbound import Outbound
from .records import OpenRound

log = logging.getLogger("fedge.coordinator")


def serve_fetch(request: FetchRequest, rnd: OpenRound | None, artifacts, outbound: Outbound,
                metrics: CoordinatorMetrics, now: float, secure: bool = False) -> FetchRefused | None:
    """Send what the request asks for; the refusal to count and log instead, or None. secure: the
    round is a secure one, whose requests go out once per stage with their params inline, so no
    task of it is ever fetched (a plain TrainTask sent back would be no request of the stage open)."""
    if request.task_id:
        if secure:
            return UnknownTask(f"task {request.task_id} of {request.device_id} is a secure round's: its requests "
                               "are sent once per stage, with their params inline, never again on request")
        return _send_inline(request, rnd, outbound, now)
    try:
        if artifacts is None:
            raise ArtifactUnavailable("this coordinator serves no artifacts (artifacts_dir is unset)")
        for item in artifacts.transfer(request, now):
            payload = outbound.encode(item)
            if payload is None:
                break  # counted and logged by Outbound; the device asks again
            outbound.send(device_topic(request.device_id, "artifact"), payload)
            metrics.artifact_bytes.inc(len(item.data))
    except FetchRefused as exc:
        return exc
    metrics.transfers.inc()
    log.info("sent the files of %s to %s", artifacts.model_id, request.device_id)
    return None


def _send_inline(request: FetchRequest, rnd: OpenRound | None, outbound: Outbound, now: float) -> FetchRefused | None:
    device_id = request.device_id
    if rnd is None or rnd.ctx.tasks.get(device_id) != request.task_id or not rnd.machine.expects(device_id):
        return UnknownTask(f"task {request.task_id} is not open for {device_id}")
    if not outbound.task(rnd, device_id, now, inline=True):  # asked again within task_resend_s
        return FetchRateLimited(f"the inline task for {device_id} went less than task_resend_s ago "
                                "(or the round is past its deadline)")
    log.info("round %d: task for %s sent again with its params inline", rnd.ctx.round_id, device_id)
    return None
