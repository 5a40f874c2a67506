"""A model fetched later joins the in-memory fleet's shared pool uncached (tools/simulate/sharing.py):
a cached copy would hand the first device's embeddings to the next one that asks with the same
cache key (found by the mutation7-simfleet audit)."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.device import LocalData
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec
from fedge.tools.simulate.sharing import SharedModels, SharedRuntime


def test_a_model_added_later_embeds_each_input_afresh_under_one_cache_key(tmp_path):
    spec = mlp_spec(6, 3, hidden=(5,), modes=("lora",))  # no backbone: embed is x, cached or not
    manifest = build_artifacts(spec, tmp_path / "m", ort_training=False)
    mid, rng = manifest.model_id, np.random.default_rng(0)
    pool = SharedModels({mid: tmp_path / "m"})
    x = [rng.random((4, 6), dtype=np.float32) for _ in range(3)]
    runtimes = [SharedRuntime(f"d{i}", LocalData(x[i], np.zeros(4, np.int64), x[i], np.zeros(4, np.int64)),
                              {mid: tmp_path / "m"}, tmp_path / "state", backend="portable", seed=0, shared=pool)
                for i in range(2)]
    runtimes[0].add_model(mid, tmp_path / "m")  # fetched again, e.g. after its files changed
    oracle = ModelRuntime(tmp_path / "m")  # a board's own copy
    for rt, xi in ((runtimes[0], x[0]), (runtimes[1], x[1]), (runtimes[0], x[2])):
        np.testing.assert_array_equal(rt.model(mid).embed(xi, cache_key=0), oracle.embed(xi))
    assert runtimes[0].model(mid) is runtimes[1].model(mid)  # still one copy for the fleet
