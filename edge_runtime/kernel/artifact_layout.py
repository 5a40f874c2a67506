"""Where the training artifacts keep what: written by `models/`, read by the trainer backends."""

from __future__ import annotations

from .errors import UnsupportedByBackend

ORT_DIR = "ort"
OPTIMIZER_FILES = {"sgd": "optimizer_sgd.onnx", "adamw": "optimizer_adamw.onnx"}  # under ORT_DIR
BAKED_ADAMW = (0.9, 0.999, 1e-8, 0.0)  # (beta1, beta2, eps, weight_decay) in optimizer_adamw.onnx


def set_adamw_attributes(model, beta1: float, beta2: float, eps: float, weight_decay: float,
                         adam_mode: int = 0) -> None:
    """Rewrite the AdamWOptimizer node of an ORT optimizer graph in place (0 = torch mode)."""
    floats = {"alpha": beta1, "beta": beta2, "epsilon": eps, "weight_decay": weight_decay}
    nodes = [n for n in model.graph.node if n.op_type == "AdamWOptimizer"]
    if len(nodes) != 1:
        raise UnsupportedByBackend(f"expected one AdamWOptimizer node in the optimizer graph, found {len(nodes)}")
    for attr in nodes[0].attribute:
        if attr.name in floats:
            attr.f = float(floats[attr.name])
        elif attr.name == "adam_mode":
            attr.i = adam_mode
