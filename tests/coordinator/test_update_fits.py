"""A max_update_bytes below what an honest update of the model takes is refused at start: the
coordinator refuses an oversize message unread, with no Ack, so the device would resend it for
days (a reviewing helper's finding: devices publish up to 64 MiB, the coordinator took 16 MiB).

The oracle for the estimate is the device's own path: postprocess (error feedback, clip,
compress) and the Update message device.py builds, on deltas of several shapes and patterns."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.update_fits import largest_update_bytes
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Update
from fedge.edge_runtime.postprocess import CONTROL_STEPS, UPDATE_STEPS, Delta, TaskContext, encode, postprocess
from tests.coordinator.fleet import EXACT, make_fleet
from tests.tiny_model import build_tiny_model

SHAPES = {"fc.weight": (64, 300), "fc.bias": (64,), "head.weight": (10, 64), "head.bias": (10,)}
SPECS = [CompressionSpec(quant_bits=32), CompressionSpec(), CompressionSpec(quant_bits=4),
         CompressionSpec(topk_fraction=0.1), CompressionSpec(quant_bits=32, topk_fraction=0.99),
         CompressionSpec(quant_bits=32, topk_fraction=0.5, clip_norm=1.0)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _deltas(rng):
    """Spread, heavy-tailed, clustered (top-k takes one block) and mostly-zero deltas."""
    n = {k: int(np.prod(s)) for k, s in SHAPES.items()}
    yield {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    yield {k: rng.standard_cauchy(s).astype(np.float32) for k, s in SHAPES.items()}
    yield {k: (np.arange(n[k]) < n[k] // 3).reshape(s).astype(np.float32) * 5 + rng.standard_normal(s).astype(
        np.float32) * 1e-3 for k, s in SHAPES.items()}
    yield {k: np.where(rng.random(s) < 0.01, 1.0, 0.0).astype(np.float32) for k, s in SHAPES.items()}


def _device_update(delta, spec, rng, control: bool) -> bytes:
    """The message a fedge device sends (device.py), with its longest ids."""
    payload = encode(postprocess(UPDATE_STEPS)(Delta(delta), TaskContext(spec), rng))
    # SCAFFOLD's control delta goes through its own chain (no clip), as in device.py
    flipped = {k: -v[::-1].copy() for k, v in delta.items()}
    control = encode(postprocess(CONTROL_STEPS)(Delta(flipped), TaskContext(spec), rng)) if control else b""
    update = Update(device_id="p" * 64, round_id=123456, task_id=uuid.uuid4().hex, update_id=uuid.uuid4().hex,
                    model_id="m", base_version=123455, num_examples=40_000, payload=payload, dense_bytes=10**9,
                    metrics={"loss": 0.5, "steps": 600.0, "norm": 3.0}, control=control)
    return encode_message(update)


@pytest.mark.parametrize("control", [False, True])
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_the_estimate_bounds_the_device_updates_tightly(spec, control):
    need = largest_update_bytes(SHAPES, CoordinatorConfig(compression=spec), control)
    sizes = [len(_device_update(d, spec, np.random.default_rng(i), control))
             for i, d in enumerate(_deltas(np.random.default_rng(7)))]
    assert max(sizes) <= need
    # tight for the random delta it measures, so a cap just above it is no waste
    assert need <= sizes[0] * 1.02 + 1024


def test_a_cap_below_an_honest_update_is_refused_at_start(model, tmp_path):
    with pytest.raises(ConfigError, match="max_update_bytes 600 is below"):
        make_fleet(model, tmp_path, clients_per_round=1, max_update_bytes=600)


def test_at_the_estimate_real_devices_updates_are_accepted_and_one_byte_less_is_refused(model, tmp_path):
    _, manifest, _ = model
    shapes = {p.name: p.shape for p in manifest.by_role("shared")}
    need = largest_update_bytes(shapes, CoordinatorConfig(compression=EXACT), False, manifest.model_id)
    with pytest.raises(ConfigError):
        make_fleet(model, tmp_path / "below", sizes=(30, 50), max_update_bytes=need - 1)
    fleet = make_fleet(model, tmp_path, sizes=(30, 50), max_update_bytes=need)
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    record = c.tick()
    assert record is not None and record.committed and record.reports == 2 and not c.rejections
    assert all(len(encode_message(u)) <= need for u in fleet.updates())
