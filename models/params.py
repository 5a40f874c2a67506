"""Parameter roles and seeded initial values for a ModelSpec."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.kernel.manifest import ParamInfo

from .spec import ModelSpec


def param_infos(spec: ModelSpec) -> tuple[ParamInfo, ...]:
    """Every parameter of the model, in a stable order, with its role."""
    infos: list[ParamInfo] = []
    shape = spec.tail_input_shape
    for layer, out_shape in zip(spec.layers, spec.feature_shapes()):
        if layer.kind == "conv":
            infos.append(ParamInfo(f"{layer.name}.weight", (layer.units, shape[0], layer.kernel, layer.kernel),
                                   "frozen"))
            infos.append(ParamInfo(f"{layer.name}.bias", (layer.units,), "frozen"))
        elif layer.kind == "dense":
            fan_in = shape[0]
            base_role = {"frozen": "frozen", "lora": "frozen", "shared": "shared", "personal": "personal"}[layer.mode]
            infos.append(ParamInfo(f"{layer.name}.weight", (fan_in, layer.units), base_role))
            infos.append(ParamInfo(f"{layer.name}.bias", (layer.units,), base_role))
            if layer.mode == "lora":
                a_role = "shared" if spec.lora_train_a else "frozen"
                infos.append(ParamInfo(f"{layer.name}.lora_a", (fan_in, spec.lora_rank), a_role))
                infos.append(ParamInfo(f"{layer.name}.lora_b", (spec.lora_rank, layer.units), "shared"))
        shape = out_shape
    features = spec.head_input_features()
    if spec.head in ("dual", "global"):
        infos.append(ParamInfo("head_global.weight", (features, spec.num_classes), "shared"))
        infos.append(ParamInfo("head_global.bias", (spec.num_classes,), "shared"))
    if spec.head in ("dual", "personal"):
        infos.append(ParamInfo("head_personal.weight", (features, spec.num_classes), "personal"))
        infos.append(ParamInfo("head_personal.bias", (spec.num_classes,), "personal"))
    return tuple(infos)


def init_params(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Initial values for every parameter, reproducible from spec.init_seed.

    Dense/conv weights: He-uniform (ReLU nets). LoRA A: uniform(+-1/sqrt(in)), B: zeros, so
    the adapter starts as a no-op. Heads: uniform(+-1/sqrt(in)). Biases: zeros.
    """
    rng = np.random.default_rng(spec.init_seed)
    values: dict[str, np.ndarray] = {}
    for info in param_infos(spec):
        kind = info.name.rsplit(".", 1)[1]
        if kind == "bias" or kind == "lora_b":
            value = np.zeros(info.shape)
        elif kind == "lora_a" or info.name.startswith("head"):
            bound = 1.0 / np.sqrt(info.shape[0])
            value = rng.uniform(-bound, bound, info.shape)
        else:
            fan_in = int(np.prod(info.shape[1:])) if len(info.shape) == 4 else info.shape[0]
            bound = np.sqrt(6.0 / fan_in)
            value = rng.uniform(-bound, bound, info.shape)
        values[info.name] = value.astype(np.float32)
    return values
