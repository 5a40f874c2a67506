"""Which model a simulation runs (the user's spec, or a default for the data) and whether it can
take the data at all."""

from __future__ import annotations

import math

from fedge.edge_runtime.kernel.errors import ConfigError, DatasetError
from fedge.models.spec import ModelSpec, load_spec, mlp_spec
from fedge.tools.datasets import ClientData, FederatedDataset

from .config import SimConfig


def choose_spec(cfg: SimConfig, data: FederatedDataset) -> ModelSpec:
    """The user's spec, or: frozen random projection (cached) + LoRA layer + dual head."""
    if cfg.model:
        return load_spec(cfg.model)
    # A --data folder is named by its user, not fedge: one called "mnist5k" holding 13 features got
    # the MNIST model (784 inputs) and was refused as not fitting it.
    return spec_for_dataset(data.name, data.input_shape[0], data.num_classes, shipped=not cfg.data_dir)


def spec_for_dataset(name: str, features: int, classes: int, shipped: bool = True) -> ModelSpec:
    """The model for a dataset when none is named (`fedge simulate`, `fedge pretrain`); `shipped`:
    `name` is a shipped dataset's, not a user's folder."""
    if shipped and name == "mnist5k":
        return load_spec("mnist-mlp-lora")
    return mlp_spec(features, classes, hidden=(200, 200), modes=("frozen", "lora"), lora_rank=8, lora_alpha=16.0,
                    name=f"{name}-mlp-lora")


def check_fits(data: FederatedDataset, spec: ModelSpec) -> None:
    """ConfigError unless the model can take the data: as many values per example as its input,
    and labels within its classes (else ONNX Runtime fails deep in a device's first step)."""
    wanted, given = math.prod(spec.input_shape), math.prod(data.input_shape)
    if given != wanted:
        raise ConfigError(f"model {spec.name} takes {wanted} values per example {tuple(spec.input_shape)}, the data "
                          f"has {given} {tuple(data.input_shape)}")
    if data.num_classes > spec.num_classes:
        raise ConfigError(f"the data's labels go up to {data.num_classes - 1}, model {spec.name} has "
                          f"{spec.num_classes} classes (labels 0..{spec.num_classes - 1}); relabel the data or give "
                          "the model more classes")


def check_scorable(training: tuple[ClientData, ...], new: tuple[ClientData, ...]) -> None:
    """DatasetError unless the run has something to score: a simulation reports accuracy on the
    devices' held-out splits, and a --data folder whose x_test are all empty (allowed per file)
    ended in numpy's "zero-size array to reduction operation minimum" after round 1 (and
    --new-devices, whose devices all had empty tests, after the last round)."""
    for group, clients in (("training", training), ("--new-devices", new)):
        if clients and not any(len(c.y_test) for c in clients):
            ids = ", ".join(c.client_id for c in clients[:3]) + (", ..." if len(clients) > 3 else "")
            raise DatasetError(f"no {group} device holds test examples ({ids}): the run scores each model on the "
                               "devices' x_test/y_test; give at least one of them held-out examples (a built-in "
                               "--dataset split this finely leaves none to hold out: fewer --devices, or --dataset "
                               "synthetic, which holds some out on every device)")
