"""`fedge audit leakage`, the small case CI runs: a plain single-example update gives its input
back exactly; inside a SecAgg sum the recovered fraction falls as n and the batch grow."""

import json

import numpy as np
import pytest

from fedge.tools.audit.inversion import init_mlp, invert_rows, local_update, match
from fedge.tools.cli import main


def test_one_example_one_step_is_inverted_exactly():
    rng = np.random.default_rng(1)
    p = init_mlp(rng)
    x = rng.random((1, 784))
    u = local_update(p, x, np.array([3]), steps=1, lr=0.1)
    rows, cands = invert_rows(u["w1"], u["b1"])
    assert rows.size > 0
    assert all(match(c, x[0]).relative_error < 1e-10 for c in cands)


def test_the_cli_writes_json_and_png_and_the_sum_hides_more_as_n_grows(tmp_path):
    # folders that do not exist yet: the run once ended on FileNotFoundError after every case
    out, png = tmp_path / "new" / "leak.json", tmp_path / "plots" / "leak.png"
    assert main(["audit", "leakage", "--json", str(out), "--png", str(png), "--devices", "1,40",
                 "--steps", "1", "--batches", "1,8"]) == 0
    doc = json.loads(out.read_text())
    assert doc["plain"]["relative_error"] < 1e-4 and doc["plain"]["psnr"] > 60
    assert "ONNX Runtime training backend" in doc["plain"]["backend"] or "unavailable" in doc["plain"]["backend"]
    assert doc["plain_numpy"]["relative_error"] < 1e-10
    assert doc["secagg_backend"] == doc["plain"]["backend"]  # the sums add the same backend's updates
    rows = {(r["devices"], r["batch_size"]): r for r in doc["secagg"]}
    assert set(rows[(1, 1)]) >= {"devices", "local_steps", "batch_size", "recovered_fraction", "best_psnr_median",
                                 "guess_psnr"}
    assert rows[(1, 1)]["recovered_fraction"] == 1.0
    assert rows[(40, 8)]["recovered_fraction"] < 0.2 < rows[(1, 1)]["recovered_fraction"]
    assert rows[(40, 8)]["best_psnr_median"] < rows[(1, 1)]["best_psnr_median"]
    assert png.stat().st_size > 1000


@pytest.mark.ort_training
def test_the_device_backend_update_of_one_example_gives_the_example_back(tmp_path):
    """The real mlp-784-lora in full mode, trained by the ORT training backend a device runs:
    every row of fc1's update whose bias moved is the example (up to float32), and a batch of
    two mixes them (the test can fail: it is not the inversion that makes the error small)."""
    from fedge.edge_runtime.kernel.errors import BackendUnavailable
    from fedge.tools.datasets import load_mnist5k

    try:
        from fedge.tools.audit.runtime_update import RuntimeUpdates

        runtime = RuntimeUpdates(str(tmp_path / "artifacts"))
    except (BackendUnavailable, ImportError) as exc:
        pytest.skip(f"onnxruntime training build not installed: {exc}")
    x, y = load_mnist5k()
    dw, db = runtime.first_layer_update(x[:1], y[:1], steps=1, lr=0.1)
    rows, cands = invert_rows(dw, db)
    assert dw.shape == (200, 784) and rows.size > 0
    assert max(match(c, x[0]).relative_error for c in cands) < 1e-4
    again, _ = runtime.first_layer_update(x[:1], y[:1], steps=1, lr=0.1)  # the session restarts from init
    assert np.array_equal(again, dw)
    dw, db = runtime.first_layer_update(x[:2], y[:2], steps=1, lr=0.1)
    rows, cands = invert_rows(dw, db)
    mixed = [min(match(c, x[0]).relative_error, match(c, x[1]).relative_error) for c in cands]
    assert max(mixed) > 1e-2
