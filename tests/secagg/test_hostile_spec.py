"""A secure round's spec is the coordinator's word: numbers that overflow on the device are a
Decline, not an error out of its poll. dp_gamma = 1e-300 with dp_clip_norm = 0.5 is within
every field's range; (S / gamma)**2 in own_noise_multiplier raised OverflowError, which the
participant did not catch, after the device had trained."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.secagg_participant import FAILED
from tests.edge_runtime.one_device import TickingClock, one_device, reply_to
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_spec_whose_noise_bound_overflows_is_declined(model, tmp_path):
    _, manifest, runtime = model
    agent, coord = one_device(model, tmp_path, clock=TickingClock())
    task = TrainTask(1, "t1", "devA", manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8, lr=0.05),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    spec = SecAggSpec(dp_gamma=1e-300, dp_clip_norm=0.5, dp_sigma=0.5)
    reply = reply_to(agent, coord, SecAggTask(task, spec, sharing=2))
    assert isinstance(reply, Decline), reply
    assert (reply.reason, reply.stage) == (FAILED, "during")
