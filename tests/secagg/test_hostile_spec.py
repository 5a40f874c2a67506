"""A secure round's spec is the coordinator's word: numbers that overflow on the device are a
Decline, not an error out of its poll. dp_gamma = 1e-300 with dp_clip_norm = 0.5 is within
every field's range; (S / gamma)**2 in own_noise_multiplier raised OverflowError, which the
participant did not catch, after the device had trained. dp_sigma = 1e-300 is in range too:
sigma^2 underflows to 0, the sampler's acceptance test divided by it and accepted no draw,
and the device's poll never returned (these tests turn such a hang into a failure)."""

from __future__ import annotations

import contextlib
import signal

import numpy as np
import pytest

from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask
from fedge.edge_runtime.kernel.secagg import ddg
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.secagg_participant import FAILED
from tests.edge_runtime.one_device import TickingClock, one_device, reply_to
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@contextlib.contextmanager
def _no_hang(seconds: int = 60):
    """A generous guard, not a timing check: a re-planted endless loop fails instead of hanging."""
    def stuck(*_):
        raise AssertionError(f"still running after {seconds} s: an endless loop")
    old = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _reply(model, tmp_path, spec: SecAggSpec):
    _, manifest, runtime = model
    agent, coord = one_device(model, tmp_path, clock=TickingClock())
    task = TrainTask(1, "t1", "devA", manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8, lr=0.05),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    with _no_hang():
        return reply_to(agent, coord, SecAggTask(task, spec, sharing=2))


@pytest.mark.parametrize("spec", [SecAggSpec(dp_gamma=1e-300, dp_clip_norm=0.5, dp_sigma=0.5),
                                  SecAggSpec(dp_gamma=1e-3, dp_clip_norm=0.5, dp_sigma=1e-300),
                                  SecAggSpec(dp_gamma=1e-3, dp_clip_norm=0.5, dp_sigma=1e-300, dp_count_scale=2)],
                         ids=["gamma overflows", "sigma^2 underflows", "count's sigma^2 underflows"])
def test_a_spec_whose_noise_numbers_overflow_is_declined(model, tmp_path, spec):
    reply = _reply(model, tmp_path, spec)
    assert isinstance(reply, Decline), reply
    assert (reply.reason, reply.stage) == (FAILED, "during")


@pytest.mark.parametrize("sigma", [1e-300, 1e-170])
def test_the_sampler_refuses_a_sigma_whose_square_underflows(sigma):
    with _no_hang(), pytest.raises(ValueError, match="square"):
        ddg.discrete_gaussian(sigma, 10, np.random.default_rng(0))


def test_the_sampler_still_draws_for_a_tiny_sigma_whose_square_does_not_underflow():
    """sigma = 1e-150: sigma^2 = 1e-300 > 0; N_Z(0, sigma^2) is then 0 (oracle: the pmf at 1 is exp(-1/(2 sigma^2)))."""
    with _no_hang():
        assert np.all(ddg.discrete_gaussian(1e-150, 100, np.random.default_rng(0)) == 0)
