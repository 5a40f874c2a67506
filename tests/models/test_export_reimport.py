"""A fedge export imported again (a device's personalized model taken to a new fleet) exports
again: the first export's names (fedge_export_0.weight, ..., and a standardizing device's
x__fedge_mean_hi, ...) stay in the new backbone, and the second export once wrote the same names
again, so onnx.checker refused it ('initializer name is not unique') after the fleet had trained.
The oracle: the runtime's own forward (its backbone session, then the trainer backend's predict)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.export import export_model  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from fedge.models.spec import mlp_spec  # noqa: E402


def _perturbed(model: ModelRuntime, rng) -> tuple[dict, dict]:
    """The model's shared and personal params moved off their start (LoRA B starts at 0)."""
    move = {k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32)
            for k, v in {**model.initial("shared"), **model.initial("personal")}.items()}
    return ({k: move[k] for k in model.initial("shared")}, {k: move[k] for k in model.initial("personal")})


def _stats(x):
    return x.mean(axis=0).astype(np.float64), x.std(axis=0).astype(np.float64) + 0.5


@pytest.mark.parametrize("cut", ["fedge_export_0.relu", "auto"])
def test_an_imported_export_exports_again(cut, tmp_path):
    rng = np.random.default_rng(2)
    raw = rng.normal(3.0, 2.0, size=(7, 10)).astype(np.float32)
    first = build_artifacts(mlp_spec(10, 3, hidden=(8, 6), modes=("lora", "lora"), lora_rank=2), tmp_path / "a",
                            ort_training=False)
    model = ModelRuntime(tmp_path / "a", expected_model_id=first.model_id)
    onnx.save(export_model(tmp_path / "a", *_perturbed(model, rng), standardization=_stats(raw)),
              tmp_path / "first.onnx")

    spec = import_spec(ImportOptions(str(tmp_path / "first.onnx"), cut=cut, num_classes=4, lora_rank=2))
    manifest = build_artifacts(spec, tmp_path / "b", ort_training=False)
    model = ModelRuntime(tmp_path / "b", expected_model_id=manifest.model_id)
    shared, personal = _perturbed(model, rng)
    mean, std = _stats(raw + 1.0)  # the new device's own statistics
    exported = export_model(tmp_path / "b", shared, personal, standardization=(mean, std) if cut == "auto" else None)
    onnx.checker.check_model(exported, full_check=True)
    x = ((raw - mean) / std).astype(np.float32) if cut == "auto" else raw
    head = "personal" if "personal" in manifest.heads else "global"  # the export's default
    want = make_backend("portable", tmp_path / "b", manifest, "sgd").predict({**shared, **personal},
                                                                           model.embed(x))[head]
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        np.testing.assert_allclose(session.run(["logits"], {"x": raw[:batch]})[0], want[:batch], atol=1e-5)


def test_an_export_imported_twice_imports_and_exports_a_third_time(tmp_path):
    """Each import adds a node fedge_cut and moves a source tensor z aside to z__source; the
    second import of an export of an import held both names already, and ONNX Runtime refused its
    backbone ('two nodes with same node name (fedge_cut)'). The oracle as above, each generation."""
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(7, 10)).astype(np.float32)
    build = build_artifacts(mlp_spec(10, 3, hidden=(8, 6), modes=("lora", "lora"), lora_rank=2), tmp_path / "g0",
                            ort_training=False)
    for generation in range(1, 4):
        model = ModelRuntime(tmp_path / f"g{generation - 1}", expected_model_id=build.model_id)
        source = tmp_path / f"export{generation}.onnx"
        onnx.save(export_model(tmp_path / f"g{generation - 1}", *_perturbed(model, rng)), source)
        spec = import_spec(ImportOptions(str(source), cut="auto", num_classes=4, lora_rank=2))
        build = build_artifacts(spec, tmp_path / f"g{generation}", ort_training=False)
        backbone = onnx.load(tmp_path / f"g{generation}" / "backbone.onnx")
        names = [n.name for n in backbone.graph.node]
        assert len(names) == len(set(names)) and "fedge_cut" in names
        imported = ModelRuntime(tmp_path / f"g{generation}", expected_model_id=build.model_id)
        shared, personal = imported.initial("shared"), imported.initial("personal")
        head = "personal" if "personal" in build.heads else "global"
        want = make_backend("portable", tmp_path / f"g{generation}", build, "sgd").predict(
            {**shared, **personal}, imported.embed(raw))[head]
        session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        got_as_is = session.run(["logits"], {"x": raw})[0]
        assert got_as_is.shape == (7, 4 if generation > 1 else 3)
        exported = export_model(tmp_path / f"g{generation}", shared, personal)
        onnx.checker.check_model(exported, full_check=True)
        again = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(again.run(["logits"], {"x": raw})[0], want, atol=1e-5)
