"""torch.onnx.export as the import tests call it: one input "input" with a dynamic batch (or, with
dynamic=False, the example's batch fixed in the graph), opset 17 unless told, the TorchScript
exporter (the dynamo one needs onnxscript, which the test venv does not install)."""

from __future__ import annotations


def export(torch, module, example, path, opset: int = 17, dynamic: bool = True) -> None:
    module.eval()
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=opset,
                  dynamic_axes={"input": {0: "batch"}} if dynamic else None)
    try:
        torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
    except TypeError:  # torch < 2.5 has no dynamo argument
        torch.onnx.export(module, (example,), str(path), **kwargs)
