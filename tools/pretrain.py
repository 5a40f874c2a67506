"""`fedge pretrain`: a pretrained starting point from data no device holds.

    dataset ──► proxy split (stratified, proxy_fraction)  ──► central training, portable graphs
       │                                                       (every dense layer and the head)
       └──► the rest, partitioned over the devices                    │
            (the proxy is removed before partitioning)                ▼
                     │                                 OUT/pretrained.onnx   (x -> logits, plain ONNX)
                     ▼                                 OUT/model.toml        (onnx = "pretrained.onnx",
            OUT/clients/<device>.npz                                          the base spec's roles)

The model trains through the same portable train-step graphs the devices run (no torch), is
written by models/export.py as a standalone graph, and comes back in through the importer
(`--model OUT/model.toml`), so a pretrained start is exactly the bring-your-own-model path.
"""

from __future__ import annotations

import argparse
import io
import math
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.errors import ConfigError, Diverged
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.models.output_dir import claim, starts_with, write_record
from fedge.tools.cli_args import path_arg

MAX_PROXY_FRACTION = 0.5
# The devices' own caps on a task (edge_runtime/kernel/protocol.py, TaskHyper): past them, a typo.
MAX_EPOCHS = 1_000_000
MAX_WEIGHT_DECAY = 1e6
# The largest learning rate a training task may carry (TaskHyper's range): past it float32 makes
# inf of the rate itself, and --lr 1e300 trained into a Diverged with numpy's overflow warning.
MAX_LR = next(f for f in fields(TaskHyper) if f.name == "lr").metadata["range"][1]
RECORD = ".fedge-pretrain.json"  # what this command wrote into --out (models/output_dir.py)
_HEADER = b"# Written by `fedge pretrain`"  # model.toml's first line


@dataclass(frozen=True)
class PretrainConfig:
    out: str
    dataset: str = "mnist5k"
    proxy_fraction: float = 0.1  # of the whole dataset, held by no device
    devices: int = 20
    partition: str = "dirichlet"
    alpha: float = 0.1
    seed: int = 0
    spec: str = ""  # architecture, and the roles the imported model gets; "": the simulator's for the dataset
    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.05  # SGD with momentum 0.9
    weight_decay: float = 0.0
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0.0 < self.proxy_fraction <= MAX_PROXY_FRACTION:
            raise ConfigError(f"proxy_fraction {self.proxy_fraction}: must be in (0, {MAX_PROXY_FRACTION}]")
        if self.epochs < 1 or self.batch_size < 1 or not 0 < self.lr < math.inf:  # NaN fails too
            raise ConfigError("pretrain: epochs, batch_size and lr must be positive (lr finite)")
        if self.lr > MAX_LR:
            raise ConfigError(f"pretrain: --lr {self.lr:g}: at most {MAX_LR:g} (a training task's largest)")
        if self.epochs > MAX_EPOCHS:  # 10**30 claimed --out, then trained for ever
            raise ConfigError(f"pretrain: --epochs {self.epochs}: at most {MAX_EPOCHS:,}")
        if not 0 <= self.weight_decay <= MAX_WEIGHT_DECAY:  # 1e300 diverged, and the error blamed --lr
            raise ConfigError(f"pretrain: --weight-decay must be in [0, {MAX_WEIGHT_DECAY:g}], got {self.weight_decay}")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise ConfigError(f"pretrain: --seed {self.seed} must be >= 0")


@dataclass(frozen=True)
class Pretrained:
    onnx: Path
    spec_file: Path
    clients_dir: Path
    proxy_examples: int
    accuracy: float  # the pretrained model as is, on the devices' held-out examples


def proxy_positions(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A stratified `fraction` of the dataset (positions), from its own stream of `seed`."""
    from fedge.tools.datasets import stratified_holdout

    proxy, _ = stratified_holdout(y, fraction, np.random.default_rng([seed, 0x5EED]))
    return np.sort(proxy)


def train_central(art: Path, x: np.ndarray, y: np.ndarray, cfg: PretrainConfig) -> dict[str, np.ndarray]:
    """Minibatch SGD (momentum 0.9) on the portable graphs; returns the trained params."""
    from fedge.edge_runtime.model_runtime import ModelRuntime
    from fedge.edge_runtime.trainer.base import StepHyper
    from fedge.edge_runtime.trainer.portable import PortableBackend

    runtime = ModelRuntime(art)
    z = runtime.embed(x)
    backend = PortableBackend(art, runtime.manifest, "sgd")
    params = {**runtime.initial("shared"), **runtime.initial("personal")}
    backend.start(params, None, params, None)
    hyper = StepHyper(lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([cfg.seed, 0xC0DE])
    for _ in range(cfg.epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(order), cfg.batch_size):
            batch = order[i:i + cfg.batch_size]
            backend.step(z[batch], y[batch], hyper)
    return backend.current()[0]


def pretrain(cfg: PretrainConfig) -> Pretrained:
    from fedge.models.build import build_artifacts
    from fedge.models.export import export_model
    from fedge.models.spec import load_spec, remode
    from fedge.tools.datasets import build_federated, load_shipped
    from fedge.tools.simulate.model_choice import spec_for_dataset

    x, y = load_shipped(cfg.dataset)
    base = load_spec(cfg.spec) if cfg.spec else spec_for_dataset(cfg.dataset, x.shape[1], int(y.max()) + 1)
    if base.onnx:
        raise ConfigError(f"pretrain --spec {cfg.spec}: an imported spec is pretrained already")
    if math.prod(base.input_shape) != x.shape[1]:
        raise ConfigError(f"pretrain --spec {cfg.spec}: it takes {math.prod(base.input_shape)} values per example, "
                          f"{cfg.dataset} has {x.shape[1]}; leave --spec out for the dataset's own")
    proxy = proxy_positions(y, cfg.proxy_fraction, cfg.seed)
    data = build_federated(cfg.dataset, cfg.devices, cfg.partition, cfg.seed, alpha=cfg.alpha,
                           test_fraction=cfg.test_fraction, exclude=proxy)
    out = Path(cfg.out)
    written = ["pretrained.onnx", "model.toml", *(f"clients/{c.client_id}.npz" for c in data.clients)]
    _claim_output(out, written)  # before the training: a refusal costs the user no wait
    # Central training moves every dense layer: the frozen ones of the base spec too.
    every = remode(base, {"frozen": "shared", "lora": "shared", "personal": "shared"}, head="global",
                   name=f"{base.name}-pretrain")
    with tempfile.TemporaryDirectory(prefix="fedge-pretrain-") as tmp:
        build_artifacts(every, tmp, ort_training=False)
        trained = train_central(Path(tmp), x[proxy], y[proxy], cfg)
        if not all(np.isfinite(v).all() for v in trained.values()):  # once written as a NaN model, exit 0
            decay = f" --weight-decay {cfg.weight_decay:g}" if cfg.weight_decay else ""
            raise Diverged(f"pretrain --lr {cfg.lr:g}{decay}: the weights became NaN or Inf in training; lower "
                           f"--lr{' or --weight-decay' if decay else ''}")
        model = export_model(tmp, trained, {}, head="global")
    atomic_write_bytes(out / "pretrained.onnx", model.SerializeToString())

    import onnxruntime as ort

    xt, yt = data.union_test()
    session = ort.InferenceSession(str(out / "pretrained.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"x": xt.reshape(len(xt), *base.input_shape).astype(np.float32)})[0]
    accuracy = float(np.mean(logits.argmax(axis=1) == yt))

    roles = ", ".join(f'{layer.name} = "{layer.mode}"' for layer in base.layers if layer.kind == "dense")
    atomic_write_bytes(out / "model.toml", (
        f"{_HEADER.decode()}: {base.name} trained centrally on {len(proxy)} proxy examples of\n"
        f"# {cfg.dataset} that no device holds (accuracy {accuracy:.4f} on the devices' test data).\n"
        f'[model]\nonnx = "pretrained.onnx"\nname = "{base.name}-pretrained"\nhead = "{base.head}"\n'
        f"lora_rank = {base.lora_rank}\nlora_alpha = {base.lora_alpha}\n"
        f"lora_train_a = {str(base.lora_train_a).lower()}\nroles = {{ {roles} }}\n").encode())
    for client in data.clients:
        buf = io.BytesIO()
        np.savez(buf, x_train=client.x_train, y_train=client.y_train, x_test=client.x_test, y_test=client.y_test)
        atomic_write_bytes(out / "clients" / f"{client.client_id}.npz", buf.getvalue())
    write_record(out / RECORD, written, "fedge pretrain")
    return Pretrained(out / "pretrained.onnx", out / "model.toml", out / "clients", len(proxy), accuracy)


def _claim_output(out: Path, written: list[str]) -> None:
    """Make `out` ready for this run's files without touching one fedge did not write
    (models/output_dir.claim). Folders from versions before the record have a model.toml with
    the header this command writes: that and the files beside it are fedge's."""
    legacy = ({"pretrained.onnx", "model.toml", *(f"clients/{p.name}" for p in (out / "clients").glob("*.npz"))}
              if starts_with(out / "model.toml", _HEADER) else ())
    claim(out, written, RECORD, "pretrain", device_dir="clients", legacy=legacy)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from fedge.tools.simulate.config import PARTITIONS

    d = PretrainConfig(out="")
    p.add_argument("--out", required=True, type=path_arg,
                   help="folder: pretrained.onnx, model.toml, clients/<device>.npz")
    p.add_argument("--dataset", choices=("mnist5k", "digits"), default=d.dataset)
    p.add_argument("--proxy-fraction", type=float, default=d.proxy_fraction,
                   help="share of the dataset that trains the model and is held by no device (default %(default)s)")
    p.add_argument("--devices", type=int, default=d.devices)
    p.add_argument("--partition", choices=PARTITIONS, default=d.partition)
    p.add_argument("--alpha", type=float, default=None, help=f"dirichlet: the concentration (default {d.alpha})")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--spec", default=None, type=path_arg,
                   help="architecture to pretrain, and the roles the import gives its layers "
                   "(default: the simulator's for the dataset: mnist-mlp-lora for mnist5k)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)


def run(args) -> int:
    from fedge.tools.simulate.flag_checks import check_alpha_applies

    check_alpha_applies(args.partition, args.alpha)
    alpha = {} if args.alpha is None else {"alpha": args.alpha}
    cfg = PretrainConfig(out=args.out, dataset=args.dataset, proxy_fraction=args.proxy_fraction, devices=args.devices,
                         partition=args.partition, seed=args.seed, spec=args.spec or "",
                         epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, **alpha)
    result = pretrain(cfg)
    print(f"pretrained {cfg.spec or 'the ' + cfg.dataset + ' model'} on {result.proxy_examples} proxy examples "
          f"({cfg.proxy_fraction:.0%} of {cfg.dataset}, "
          f"held by no device): accuracy {result.accuracy:.4f} on the devices' test data before round 1")
    print(f"wrote {result.onnx}, {result.spec_file} (import it: --model {result.spec_file}) and "
          f"{result.clients_dir}/ ({cfg.devices} devices, {cfg.partition}; use --data {result.clients_dir})")
    return 0
