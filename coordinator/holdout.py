"""The model guard's optional second check: the candidate model's loss on a small labelled
set of the coordinator's own (`[coordinator] guard_set`, an .npz with `x` and `y`).

A round whose aggregate is finite can still wreck the model (a poisoned update inside the
norm bound, a server optimizer stepping too far). With a guard set the coordinator scores the
current and the candidate global model with the model's own eval graph (the global head,
personal layers at their initial values, as a device that has not personalized would run it)
and abandons the round when the candidate's mean cross-entropy is over guard_max_loss_ratio
times the current one's. Needs onnxruntime on the coordinator (`pip install 'fedge[device]'`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.errors import ConfigError, DatasetError
from fedge.edge_runtime.kernel.features import laid_out_otherwise
from fedge.edge_runtime.kernel.files import load_npz
from fedge.edge_runtime.kernel.manifest import Manifest
from fedge.edge_runtime.kernel.split_check import MODEL_MAX_CLASSES, check_split

from .guard import holdout_fault, mean_cross_entropy


class HoldoutCheck:
    def __init__(self, artifacts_dir: str | Path, manifest: Manifest, set_path: str | Path, max_ratio: float):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("guard_set needs onnxruntime on the coordinator: pip install 'fedge[device]'") from None
        art = Path(artifacts_dir)
        try:
            data = load_npz(Path(set_path))
        except Exception as exc:  # missing, a folder, not an .npz, damaged: np.load raises a dozen kinds
            raise ConfigError(f"guard_set {set_path}: cannot be read as an .npz of x and y "
                              f"({type(exc).__name__}: {exc})") from None
        if "x" not in data or "y" not in data or not data["x"].ndim or not data["y"].ndim \
                or len(data["x"]) != len(data["y"]) or not len(data["y"]):  # a 0-d array has no len()
            raise ConfigError(f"guard_set {set_path}: needs arrays x and y of the same, non-zero length")
        x, self.y = checked_set(set_path, np.asarray(data["x"]), np.asarray(data["y"]), manifest)
        init = load_npz(art / "params_init.npz")
        self.personal = {p.name: np.asarray(init[p.name], np.float32) for p in manifest.by_role("personal")}
        self.eval = ort.InferenceSession(str(art / "eval.onnx"), providers=["CPUExecutionProvider"])
        if (art / "backbone.onnx").exists():  # a frozen backbone: embed once, the set never changes
            backbone = ort.InferenceSession(str(art / "backbone.onnx"), providers=["CPUExecutionProvider"])
            x = backbone.run(["z"], {"x": x})[0]
        self.z = x.reshape(len(x), -1)
        self.max_ratio = max_ratio
        self._scored: tuple[int, float] | None = None  # (model version, loss): the current model's

    def loss(self, shared: dict[str, np.ndarray]) -> float:
        feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in {**shared, **self.personal}.items()}
        feeds["z"] = self.z
        (logits,) = self.eval.run(["logits_global"], feeds)
        return mean_cross_entropy(logits, self.y)

    def delta_loss(self, current: dict[str, np.ndarray]):
        """The guard-set loss of `current` moved by a delta (a dict of some of its tensors), for
        screening a round's updates (robust/screening.py): the plain step current + delta, what
        FedAvg would apply, whatever the server optimizer then does with the mean."""

        base = {k: np.asarray(v, np.float64) for k, v in current.items()}  # once: called O(k^2) times a round

        def loss(delta: dict[str, np.ndarray]) -> float:
            return self.loss({k: v + delta[k] if k in delta else v for k, v in base.items()})

        return loss

    def fault(self, version: int, current: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> str | None:
        """None when `candidate` may replace `current` (the model at `version`), else why not."""
        if self._scored is None or self._scored[0] != version:
            self._scored = (version, self.loss(current))
        return holdout_fault(self._scored[1], self.loss(candidate), self.max_ratio)


def checked_set(set_path, x: np.ndarray, y: np.ndarray, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """(x as the model's input, float32 with uint8 as x / 255; y as int64), or ConfigError naming what
    is wrong: the devices' own checks of a split (kernel/split_check.py) with the model's classes as
    the label bound, then its input's size and layout. Checked at start: a label past the model's
    classes raised IndexError out of the first commit, a negative one was read from the end (-1 as
    the last class), 1.7 as class 1, an (n, 1) y indexed the logits as an (n, n) grid, and x of
    another width failed in onnxruntime at the first commit; NaN in x made every model's loss inf,
    which holdout_fault refuses every time. x of the right size in another layout (channels-last)
    is refused as the devices refuse theirs."""
    where = f"guard_set {set_path}"
    classes = int(manifest.spec.get("num_classes", 0))
    try:
        x32, y = check_split(Path(str(set_path)), "", x, y, max_classes=classes or MODEL_MAX_CLASSES)
    except DatasetError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    want = tuple(manifest.input_shape)
    if math.prod(x.shape[1:]) != math.prod(want):
        raise ConfigError(f"{where}: x has shape {x.shape[1:]} per example; the model takes {want}")
    if laid_out_otherwise(x, want):  # the devices' rule: ModelRuntime.check_input
        raise ConfigError(f"{where}: x has shape {x.shape[1:]} per example, laid out otherwise than the model's "
                          f"input {want} (channels-last for a channels-first model? np.moveaxis(x, -1, 1))")
    return x32.reshape(len(x32), *want), y


def open_holdout(config, manifest: Manifest) -> HoldoutCheck | None:
    if not config.guard_set:
        return None
    if not config.artifacts_dir:
        raise ConfigError("guard_set needs artifacts_dir (the model's eval graph)")
    return HoldoutCheck(config.artifacts_dir, manifest, config.guard_set, config.guard_max_loss_ratio)
