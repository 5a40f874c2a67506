"""`ImportOptions`: what to make of a user's ONNX model (models/onnx_import.py reads the file).

Read from a spec's [model] table with `onnx = PATH`, or from `fedge import-onnx`'s flags. What
the options alone decide is refused here, by key, before the file is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.wire_fields import I64, bounded

from .spec import HEAD_MODES, LAYER_MODES, MAX_CLASSES, MAX_UNITS, MAX_VALUES


@dataclass(frozen=True)
class ImportOptions:
    """What to make of the source model. roles: layer name (fc1, fc2, ...) -> mode."""

    onnx: str
    cut: str = "auto"  # tensor name, or "auto"
    roles: dict = field(default_factory=dict)
    default_role: str = "lora"  # hidden tail layers not named in roles
    num_classes: int = 0  # 0: keep the source's classifier; > 0: a new head with this many classes
    head: str = "dual"
    input_shape: tuple[int, ...] = ()  # per example; needed where the file leaves dims symbolic
    name: str = ""
    lora_rank: int = 4
    lora_alpha: float = 8.0
    lora_train_a: bool = True
    init_seed: int = bounded(0, I64[1], 0)  # numpy takes no negative seed

    def __post_init__(self) -> None:
        for layer, mode in self.roles.items():
            if mode not in LAYER_MODES:
                raise ConfigError(f"roles: the role {mode!r} of {layer} is not in {LAYER_MODES} (import {self.onnx})")
        if self.default_role not in LAYER_MODES:
            raise ConfigError(f"default_role {self.default_role!r} not in {LAYER_MODES} (import {self.onnx})")
        if self.head not in HEAD_MODES:
            raise ConfigError(f"head {self.head!r} not in {HEAD_MODES} (import {self.onnx})")
        if self.num_classes == 1 or not 0 <= self.num_classes <= MAX_CLASSES:
            raise ConfigError(f"num_classes must be 0 (keep the classifier) or in [2, {MAX_CLASSES}] "
                              f"(import {self.onnx})")
        if not self.cut:
            raise ConfigError(f"cut must name a tensor of the model, or be 'auto' (import {self.onnx})")
        # what the imported spec would refuse anyway (spec.ModelSpec), refused before the file is read
        if any(d < 1 for d in self.input_shape) or math.prod(self.input_shape) > MAX_VALUES:
            raise ConfigError(f"input_shape {self.input_shape} must be positive, at most {MAX_VALUES} values per "
                              f"example (import {self.onnx})")
        if not 1 <= self.lora_rank <= MAX_UNITS:
            raise ConfigError(f"lora_rank must be in [1, {MAX_UNITS}] (import {self.onnx})")
        if not 0 < self.lora_alpha < math.inf:
            raise ConfigError(f"lora_alpha must be > 0 and finite, got {self.lora_alpha} (import {self.onnx})")
