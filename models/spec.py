"""Model specs as data.

A spec is a stack of layers followed by a head. Each layer has a mode that decides the
role of its parameters in the manifest:

    frozen    weight, bias                          -> frozen (never trained)
    lora      weight, bias frozen; lora_a, lora_b   -> shared (uploaded, aggregated);
              lora_a frozen instead when lora_train_a = false (FFA-LoRA)
    shared    weight, bias                          -> shared
    personal  weight, bias                          -> personal (never leaves the device)

The head decides how a device predicts:

    dual      head_global (shared) + head_personal (personal); both are trained on the
              sum of their losses. The global model uses head_global, the device's
              personalized model head_personal. (default)
    global    head_global only: plain federated model, no personalization
    personal  head_personal only: nothing global to evaluate

The frozen prefix of the stack (every layer before the first trainable one) is the
"backbone": devices run it once per local dataset and cache the embeddings. Conv layers
must sit in that prefix: trainable layers are dense.

Dense weights have shape (in, out) and compute y = x @ W + b. LoRA adds
(alpha / rank) * (x @ A) @ B with A (in, rank) and B (rank, out); B starts at zero.

An imported spec (`onnx` set; see models/onnx_import.py) describes only the dense tail of a
user's ONNX model: the graph up to the tensor `onnx_cut` is the backbone, `input_shape` is the
source model's input, the layers start from `onnx_features` values per example, and the
pretrained weights come from the file whose sha256 is `onnx_sha256`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedge.edge_runtime.kernel.activations import ACTIVATIONS, DEFAULT_NEGATIVE_SLOPE
from fedge.edge_runtime.kernel.configfile import from_dict, load_toml
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE, load_manifest
from fedge.edge_runtime.kernel.wire_fields import I64, bounded

LAYER_KINDS = ("dense", "conv", "pool", "gap", "flatten")
LAYER_MODES = ("frozen", "lora", "shared", "personal")
HEAD_MODES = ("dual", "global", "personal")
# Sizes past what an edge device holds are typos (units = 100000000 asked numpy for 48 GiB, and
# a --classes of 10**8 ran the import into the OOM killer): refused by name instead.
MAX_UNITS = 65_536  # a dense layer's outputs, a conv's channels, a LoRA rank
MAX_CLASSES = 100_000
MAX_VALUES = 1 << 24  # values per example at the input

@dataclass(frozen=True)
class LayerSpec:
    name: str
    kind: str = "dense"
    units: int = 0  # dense: output features; conv: output channels
    kernel: int = 3  # conv only; stride 1, "same" padding. pool: 2x2 average, stride 2
    activation: str = "relu"  # edge_runtime/kernel/activations.py: forward and backward of each
    mode: str = "frozen"
    negative_slope: float = DEFAULT_NEGATIVE_SLOPE  # leaky_relu's slope for x < 0 (Keras' default is 0.3)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ConfigError(f"name {self.name!r} of a layer must be alphanumeric/underscore")
        if self.name.startswith("head"):
            raise ConfigError(f"layer name {self.name!r}: names starting with 'head' are reserved")
        if self.kind not in LAYER_KINDS:
            raise ConfigError(f"layer {self.name}: kind {self.kind!r} not in {LAYER_KINDS}")
        if self.mode not in LAYER_MODES:
            raise ConfigError(f"layer {self.name}: mode {self.mode!r} not in {LAYER_MODES}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"layer {self.name}: activation {self.activation!r} not in {ACTIVATIONS}")
        if not 0 <= self.negative_slope <= 1:  # NaN fails this too
            raise ConfigError(f"layer {self.name}: negative_slope must be in [0, 1], got {self.negative_slope}")
        if self.activation != "leaky_relu" and self.negative_slope != DEFAULT_NEGATIVE_SLOPE:
            raise ConfigError(f"layer {self.name}: negative_slope is leaky_relu's, not {self.activation}'s")
        if self.kind in ("dense", "conv") and not 0 < self.units <= MAX_UNITS:
            raise ConfigError(f"layer {self.name}: units must be in [1, {MAX_UNITS}], got {self.units}")
        if self.kind == "conv" and (self.kernel < 1 or self.kernel % 2 == 0):
            raise ConfigError(f"layer {self.name}: kernel must be odd and >= 1 (same padding)")
        if self.kind in ("conv", "pool", "gap", "flatten") and self.mode != "frozen":
            raise ConfigError(
                f"layer {self.name}: {self.kind} layers must be frozen (trainable layers are dense); "
                "put trainable dense layers after the conv stack"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.activation != "leaky_relu":  # every other layer keeps the dict (and so the model_id) it always had
            del d["negative_slope"]
        return d

@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...]  # per example: (features,) or (channels, height, width)
    num_classes: int
    layers: tuple[LayerSpec, ...] = ()
    head: str = "dual"
    lora_rank: int = 4
    lora_alpha: float = 8.0
    # False: A stays at its random init (frozen) and only B trains and travels (FFA-LoRA, Sun
    # et al. 2024): half the adapter upload for a dense layer, and FedAvg of B alone is the
    # exact average of the adapters' products B·A, which averaging A and B separately is not.
    lora_train_a: bool = True
    init_seed: int = bounded(0, I64[1], 0)  # numpy refuses a negative one (params.py seeds the init with it)
    onnx: str = ""  # source model of an imported spec ("" for a spec written by hand)
    onnx_sha256: str = ""
    onnx_cut: str = ""  # tensor name: the backbone ends here and the dense tail begins
    onnx_features: int = 0  # features per example at the cut
    onnx_keep_head: bool = False  # heads start from the source's classifier, not at random

    def __post_init__(self) -> None:
        if self.onnx:
            if self.onnx_features <= 0 or not self.onnx_cut or len(self.onnx_sha256) != 64:
                raise ConfigError(f"model {self.name}: an imported spec needs onnx_cut, onnx_features and onnx_sha256; "
                                  "write `onnx = PATH` in the spec and let fedge read the file")
            if any(layer.kind != "dense" for layer in self.layers):
                raise ConfigError(f"model {self.name}: an imported spec's layers are its dense tail only")
        if not self.input_shape or any(d <= 0 for d in self.input_shape) or math.prod(self.input_shape) > MAX_VALUES:
            raise ConfigError(f"model {self.name}: input_shape {self.input_shape} must be positive, at most "
                              f"{MAX_VALUES} values per example")
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ConfigError(f"model {self.name}: num_classes must be in [2, {MAX_CLASSES}], got {self.num_classes}")
        if not 0 < self.lora_alpha < math.inf:  # NaN fails this too: the adapters' scale
            raise ConfigError(f"model {self.name}: lora_alpha must be > 0 and finite, got {self.lora_alpha}")
        if self.head not in HEAD_MODES:
            raise ConfigError(f"model {self.name}: head {self.head!r} not in {HEAD_MODES}")
        if not 1 <= self.lora_rank <= MAX_UNITS:
            raise ConfigError(f"model {self.name}: lora_rank must be in [1, {MAX_UNITS}]")
        names = [layer.name for layer in self.layers]
        if len(set(names)) != len(names):
            raise ConfigError(f"model {self.name}: duplicate layer names {names}")
        seen_trainable = False
        for layer in self.layers:
            if layer.mode != "frozen":
                seen_trainable = True
            elif seen_trainable and layer.kind != "dense":
                raise ConfigError(f"model {self.name}: layer {layer.name} ({layer.kind}) after a trainable layer")
        self.feature_shapes()  # validates shapes

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank

    def feature_shapes(self) -> list[tuple[int, ...]]:
        """Per-example output shape of each layer (index i = after layer i)."""
        shape = self.tail_input_shape
        out = []
        for layer in self.layers:
            if layer.kind == "conv":
                if len(shape) != 3:
                    raise ConfigError(f"layer {layer.name}: conv needs (C, H, W) input, got {shape}")
                shape = (layer.units, shape[1], shape[2])
            elif layer.kind == "pool":  # 2x2 average pool, stride 2
                if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
                    raise ConfigError(f"layer {layer.name}: pool needs (C, H>=2, W>=2) input, got {shape}")
                shape = (shape[0], shape[1] // 2, shape[2] // 2)
            elif layer.kind == "gap":
                if len(shape) != 3:
                    raise ConfigError(f"layer {layer.name}: gap needs (C, H, W) input, got {shape}")
                shape = (shape[0],)
            elif layer.kind == "flatten":
                shape = (int(math.prod(shape)),)
            else:
                if len(shape) != 1:
                    raise ConfigError(
                        f"layer {layer.name}: dense needs flat input, got {shape}; add a flatten or gap layer"
                    )
                shape = (layer.units,)
            out.append(shape)
        if (out[-1] if out else shape).__len__() != 1:
            raise ConfigError(f"model {self.name}: the head needs flat features; end with gap/flatten/dense")
        return out

    @property
    def tail_input_shape(self) -> tuple[int, ...]:
        """Per-example shape the layers start from: the cut's for an imported spec."""
        return (self.onnx_features,) if self.onnx else tuple(self.input_shape)

    @property
    def backbone_depth(self) -> int:
        """Number of leading frozen layers (the cached backbone)."""
        depth = 0
        for layer in self.layers:
            if layer.mode != "frozen":
                break
            depth += 1
        return depth

    def embedding_shape(self) -> tuple[int, ...]:
        """Per-example shape of the backbone's output (the train graph's input)."""
        depth = self.backbone_depth
        return self.tail_input_shape if depth == 0 else self.feature_shapes()[depth - 1]

    def head_input_features(self) -> int:
        shapes = self.feature_shapes()
        return (shapes[-1] if shapes else self.tail_input_shape)[0]

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.onnx:  # hand-written specs keep the dict (and so the model_id) they always had
            for key in [k for k in d if k.startswith("onnx")]:
                del d[key]
        d["input_shape"] = list(self.input_shape)
        d["layers"] = [layer.to_dict() for layer in self.layers]
        return d

    def with_input(self, input_shape: tuple[int, ...], num_classes: int) -> ModelSpec:
        return replace(self, input_shape=tuple(input_shape), num_classes=num_classes)

def spec_from_dict(data: dict, where: str = "spec") -> ModelSpec:
    return from_dict(ModelSpec, data, where=where)

def located(path: str | Path) -> Path:
    """`path` absolute, its folder resolved (a symlinked folder's `..` is its target's parent: a
    path relative to it is the kernel's), its file name kept (a link to this version of a model)."""
    path = Path(path).absolute()
    return path.parent.resolve() / path.name


def _source_beside(spec: dict, folder: Path, where: str) -> dict:
    """A built folder's recorded spec with its import source found: relative to the folder
    (build.py records it so), else, for folders built before, where it was recorded (absolute,
    or relative to the cwd)."""
    source = spec.get("onnx") if isinstance(spec, dict) else None
    if not isinstance(source, str) or not source:  # not an import, or a mistyped spec spec_from_dict refuses
        return spec
    tried = list(dict.fromkeys([folder / source, Path(source)]))  # one path where it is absolute
    found = next((str(located(p)) for p in tried if p.exists()), None)  # False, not ValueError, for a NUL byte
    if found is None:
        looked = " nor ".join(repr(str(p)) for p in tried)
        raise ConfigError(f"{where}: the model's ONNX source {source!r} is not at {looked}; put it back, or build "
                          "again from it")
    return {**spec, "onnx": found}


def load_spec(path_or_name: str | Path) -> ModelSpec:
    """Load a spec from a TOML file, a folder `fedge build-artifacts` wrote (its manifest's spec), or by
    name from the specs shipped with fedge."""
    path = Path(path_or_name)
    if not path.exists():
        builtin = Path(__file__).parent / "specs" / f"{path_or_name}.toml"
        if not builtin.exists():
            known = sorted(p.stem for p in (Path(__file__).parent / "specs").glob("*.toml"))
            raise ConfigError(f"no spec file {path_or_name!r} and no built-in spec by that name; built-ins: {known}")
        path = builtin
    if path.is_dir():
        if (path / MANIFEST_FILE).is_file():  # a build's folder: the spec it records (an import's source
            # is read again, and must still have its sha256)
            where = str(path / MANIFEST_FILE)
            return spec_from_dict(_source_beside(load_manifest(path, verify=False).spec, path, where), where)
        raise ConfigError(f"{path} is a folder with no {MANIFEST_FILE}; a model is a spec file (TOML), a built-in "
                          "name, or a folder `fedge build-artifacts` wrote (the model.toml that `fedge pretrain` "
                          "wrote, or the spec you gave `fedge build-artifacts`, also do)")
    data = load_toml(path)
    model = data.get("model")
    if not isinstance(model, dict) or set(data) - {"model"}:
        raise ConfigError(f"{path}: expected exactly one [model] table (with [[model.layers]]), got {sorted(data)}")
    if "onnx" in model and "onnx_sha256" not in model:  # `onnx = PATH`: import the file (onnx_import.py)
        from .onnx_import import ImportOptions, import_spec

        if "layers" in model:  # an import's dense tail is read from the file
            raise ConfigError(f"{path.name}: model.onnx imports a model file, whose layers fedge reads; leave out "
                              "[[model.layers]] (or leave out onnx for a model written by hand)")
        # read as the key's type first: `onnx = 1` once reached Path() and a TypeError
        options = from_dict(ImportOptions, model, path.name, "model")
        if not options.onnx:
            raise ConfigError(f"{path.name}: model.onnx is empty: name the ONNX file to import")
        source = Path(options.onnx)  # relative to the spec file
        return import_spec(replace(options, onnx=str(source if source.is_absolute() else path.parent / source)))
    return from_dict(ModelSpec, model, path.name, "model")

def mlp_spec(
    input_features: int,
    num_classes: int,
    hidden: tuple[int, ...] = (200, 200),
    modes: tuple[str, ...] | None = None,
    head: str = "dual",
    lora_rank: int = 4,
    lora_alpha: float = 8.0,
    name: str = "mlp",
    init_seed: int = 0,
) -> ModelSpec:
    """An MLP for flat features of any width."""
    modes = modes or tuple("lora" for _ in hidden)
    if len(modes) != len(hidden):
        raise ConfigError(f"mlp_spec: {len(hidden)} hidden layers but {len(modes)} modes")
    layers = tuple(LayerSpec(name=f"fc{i + 1}", kind="dense", units=u, mode=m)
                   for i, (u, m) in enumerate(zip(hidden, modes)))
    return ModelSpec(
        name=name,
        input_shape=(input_features,),
        num_classes=num_classes,
        layers=layers,
        head=head,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        init_seed=init_seed,
    )


def remode(spec: ModelSpec, modes: dict[str, str] | None = None, head: str | None = None,
           name: str | None = None) -> ModelSpec:
    """A copy of `spec` with layer modes mapped (old mode -> new mode, e.g. {"lora": "shared"}),
    optionally another head and name. Shapes stay the same; roles, and so what is uploaded, change."""
    modes = modes or {}
    for new in modes.values():
        if new not in LAYER_MODES:
            raise ConfigError(f"remode: mode {new!r} not in {LAYER_MODES}")
    layers = tuple(replace(layer, mode=modes.get(layer.mode, layer.mode)) if layer.kind == "dense" else layer
                   for layer in spec.layers)
    return replace(spec, layers=layers, head=head or spec.head, name=name or spec.name)
