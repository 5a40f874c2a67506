"""`fedge device export`: a device's personalized model as one ONNX file (models/export.py).

The device holds the global model of the last task it trained (global.npz in its store) and
its personal params; the export joins them with the model's backbone, only when they were
written for the contents of the artifacts it finds (their state key, superseded.py): a personal
head trained on another backbone under the same model id was exported with this one. The file
is written 0600 (it holds the personal params the device's 0700 folder keeps to itself)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedge.edge_runtime.data_file import feature_dtype
from fedge.edge_runtime.fetched_models import installed_models
from fedge.edge_runtime.kernel.device_folder import ARTIFACTS_DIR
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.superseded import foreign
from fedge.tools.cli_args import path_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=path_arg, help="device TOML (its device_id and state_dir)")
    p.add_argument("--out", required=True, type=path_arg, help="ONNX file to write: x -> logits")
    p.add_argument("--model-id", default="", help="which model (default: the only one the device has)")
    p.add_argument("--head", choices=("personal", "global"), default=None,
                   help="default: the personal head where the model has one")


def run(args) -> int:
    from fedge.edge_runtime.device_config import load_device_config
    from fedge.models.export import export_model

    check_export_path(Path(args.out))
    cfg = load_device_config(args.config)
    root = Path(cfg.state_dir) / cfg.device_id
    artifacts = root / ARTIFACTS_DIR
    ids = sorted(installed_models(artifacts))
    if args.model_id and args.model_id not in ids or not ids:
        relative = "" if Path(cfg.state_dir).is_absolute() else (
            f" (state_dir {cfg.state_dir!r} is relative: it is taken from the current folder, so run this where "
            "the device runs, or give the config an absolute state_dir)")
        wanted = f"artifacts for model {args.model_id}" if args.model_id else "model artifacts"
        others = f"; it has only {', '.join(ids)}" if ids else ""
        raise ConfigError(f"device {cfg.device_id}: no {wanted} under {artifacts.absolute()}{relative}{others}")
    if not args.model_id and len(ids) > 1:
        raise ConfigError(f"device {cfg.device_id} has models {ids}: choose one with --model-id")
    model_id = args.model_id or ids[0]
    runtime = ModelRuntime(artifacts / model_id, expected_model_id=model_id)  # verified, and its state key
    store = DeviceStore(root, model_id)  # read only: a device that is running may write it
    other = foreign(store.dir, runtime.state_key)
    if other:
        raise ConfigError(f"device {cfg.device_id}: {', '.join(other)} of model {model_id} were written for other "
                          f"contents of that model id than {artifacts / model_id} holds (its files changed since); "
                          "let the device train or evaluate once with these artifacts, then export")
    shared = store.load_global()
    if shared is None:
        raise ConfigError(f"device {cfg.device_id} has not trained model {model_id} yet: no global model to export")
    personal = store.load_personal()
    if personal is None:  # a model without personal params, or a device that never trained one
        personal = runtime.initial("personal")
    stats, source = device_statistics(cfg, root) if cfg.data.standardize else (None, "")
    model = export_model(artifacts / model_id, shared, personal, head=args.head, standardization=stats)
    note = input_note(feature_dtype(cfg.data.npz), standardized=source)
    model.producer_name = "fedge"  # an imported backbone keeps its source's; check_export_path reads it
    model.metadata_props.add(key="fedge.input", value=note)
    model.doc_string += f"; input {note}"
    # 0600, as the device's own folder keeps them: it holds this device's personal params. A file at
    # --out (only an export of fedge's: check_export_path) is replaced by the rename, never chmodded.
    atomic_write_bytes(Path(args.out), model.SerializeToString(), mode=0o600)
    print(f"wrote {args.out}: device {cfg.device_id}, model {model_id}, input {model.graph.input[0].name}, "
          f"output logits; input {note}")
    return 0


def check_export_path(out: Path) -> None:
    """ConfigError unless `out` may take the export: no file there, or an ONNX model fedge wrote
    (producer `fedge`: a re-export replaces its own). The write renames a file over the path, so
    `--out` naming someone's file (or /dev/null, as root) replaced it."""
    from fedge.tools.beside_json import check_own_output

    def exported_by_fedge(path: Path) -> bool:
        import onnx

        return onnx.load(str(path), load_external_data=False).producer_name == "fedge"

    check_own_output(out, exported_by_fedge, "not an ONNX model fedge exported")


def device_statistics(cfg, root: Path) -> tuple[tuple[np.ndarray, np.ndarray], str]:
    """The (mean, std) a device with [data] standardize = true applies, and where they came from
    in words: those it recorded at its last start or SIGHUP reload (standardization_record.py),
    else those of its data file as it is now, or DatasetError naming it."""
    from fedge.edge_runtime.device_config import read_local_data
    from fedge.edge_runtime.kernel.errors import DatasetError
    from fedge.edge_runtime.standardization_record import recorded_source, recorded_standardization

    recorded = recorded_standardization(root)
    source = recorded_source(root) if recorded is not None else None
    statistics = cfg.data.statistics if source is None else source  # a record from before it said: the config
    whose = (f"the fleet's mean and std ([data] statistics {statistics})" if statistics
             else "this device's training mean and std")
    if recorded is not None:
        return recorded, f"{whose} as it applies them (recorded at its last start or SIGHUP reload)"
    try:
        stats = read_local_data(cfg.data.npz, standardize=True, statistics=cfg.data.statistics)[1]
    except DatasetError as exc:
        raise DatasetError(f"device {cfg.device_id}: [data] standardize = true, so the export puts the device's "
                           f"standardization in front of its model; it has recorded none (it has not run since "
                           f"fedge records it) and its data files cannot give it: {exc}") from None
    if cfg.data.statistics:
        return stats, (f"{whose} as the file is at export (the device has recorded none; if it changed since the "
                       "device loaded it, they are not the ones it trained with)")
    return stats, (f"the training mean and std of {cfg.data.npz} as it is at export (the device has recorded none; "
                   "if the file changed since the device loaded it, they are not the ones it trained with)")


def input_note(dtype: np.dtype | None, standardized: str = "") -> str:
    """What the exported model's input must hold: the device trained on its data as check_split
    made it (edge_runtime/examples.py), uint8 pixels divided by 255, so raw 0..255 values fed to
    the export would be read as 255 times brighter. dtype: the device's x_train's (None: unknown).
    standardized: the statistics the export standardizes its input with, in words ([data]
    standardize = true; "": none)."""
    if dtype is None:
        note = "x as float32 the way the device's loader makes it: uint8 data divided by 255, other types as saved"
    elif dtype == np.uint8:
        note = "x as float32: this device's uint8 data divided by 255, as it trained on it"
    else:
        note = f"x as float32: this device's {dtype} data as saved, unscaled"
    if standardized:
        note += (f", not standardized: the model itself standardizes it ([data] standardize = true), (x - mean) / std "
                 f"in its first three nodes, with {standardized}")
    return note
