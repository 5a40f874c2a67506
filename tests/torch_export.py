"""torch.onnx.export as the import tests call it: one input "input" with a dynamic batch, opset 17,
the TorchScript exporter (the dynamo one needs onnxscript, which the test venv does not install)."""

from __future__ import annotations


def export(torch, module, example, path) -> None:
    module.eval()
    kwargs = dict(input_names=["input"], output_names=["output"], dynamic_axes={"input": {0: "batch"}},
                  opset_version=17)
    try:
        torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
    except TypeError:  # torch < 2.5 has no dynamo argument
        torch.onnx.export(module, (example,), str(path), **kwargs)
