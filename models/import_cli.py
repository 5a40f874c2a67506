"""`fedge build-artifacts --from-onnx MODEL OUTDIR`: the options of an import (see onnx_import.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from fedge.edge_runtime.kernel.errors import ConfigError

# The import options' defaults, by dest: with a SPEC, any other value is refused.
IMPORT_DEFAULTS = {"cut": "auto", "role": [], "default_role": "lora", "classes": 0, "head": "dual",
                   "input_shape": "", "lora_rank": 4, "lora_alpha": 8.0, "name": ""}


def add_import_arguments(p: argparse.ArgumentParser, path_type: Callable[[str], str] = str) -> None:
    """The import's options; `path_type` checks --from-onnx (the CLI's path_arg: `--from-onnx ''`
    was read as not given, and the SPEC built)."""
    d = IMPORT_DEFAULTS
    g = p.add_argument_group("import a pretrained ONNX model (instead of SPEC)")
    g.add_argument("--from-onnx", metavar="MODEL", type=path_type,
                   help="ONNX model: its prefix is the frozen backbone, its dense tail trains")
    g.add_argument("--cut", default=d["cut"],
                   help="tensor where the backbone ends (default: where the dense tail begins)")
    g.add_argument("--role", action="append", default=[], metavar="LAYER=MODE",
                   help="mode of a tail layer: fc1=frozen|lora|shared|personal (repeatable)")
    g.add_argument("--default-role", default=d["default_role"], help="mode of the tail layers not named by --role")
    g.add_argument("--classes", type=int, default=d["classes"],
                   help="replace the classifier by a new head with this many classes")
    g.add_argument("--head", default=d["head"], choices=("dual", "global", "personal"))
    g.add_argument("--input-shape", default=d["input_shape"],
                   help="per-example input shape where the model leaves it free, e.g. 3,48,192")
    g.add_argument("--lora-rank", type=int, default=d["lora_rank"])
    g.add_argument("--lora-alpha", type=float, default=d["lora_alpha"])
    g.add_argument("--name", default=d["name"])


def spec_from_args(args):
    """The spec a build-artifacts command line names: a spec file, or an import."""
    from .spec import load_spec

    if bool(args.spec) == bool(args.from_onnx):
        raise ConfigError("build-artifacts: give either SPEC or --from-onnx MODEL (one of them)")
    if args.spec:
        # a SPEC file sets these itself: `mnist-mlp-lora out --classes 3` once built 10 classes, silently
        given = [f"--{dest.replace('_', '-')}" for dest, default in IMPORT_DEFAULTS.items()
                 if getattr(args, dest) != default]
        if given:
            raise ConfigError(f"{', '.join(given)}: only for --from-onnx; a SPEC sets its own (edit its TOML)")
        return load_spec(args.spec)
    from .onnx_import import ImportOptions, import_spec

    roles = {}
    for item in args.role:
        layer, sep, mode = item.partition("=")
        if not sep:
            raise ConfigError(f"--role {item!r}: expected LAYER=MODE, e.g. fc1=lora")
        roles[layer.strip()] = mode.strip()
    try:
        shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else ()
    except ValueError:
        raise ConfigError(f"--input-shape {args.input_shape!r}: expected integers separated by commas") from None
    spec = import_spec(ImportOptions(args.from_onnx, cut=args.cut, roles=roles,
                                     default_role=args.default_role, num_classes=args.classes, head=args.head,
                                     input_shape=shape, name=args.name, lora_rank=args.lora_rank,
                                     lora_alpha=args.lora_alpha))
    # a tail of no hidden layers (the cut moved past a GELU, a Reshape, ...) once printed "tail ;"
    tail = ", ".join(f"{layer.name}={layer.mode}" for layer in spec.layers) or "no hidden layers"
    print(f"imported {args.from_onnx}: cut at {spec.onnx_cut!r} ({spec.onnx_features} features); tail {tail}"
          + f"; head {spec.head}"
          + (" (pretrained classifier)" if spec.onnx_keep_head else f" (new, {spec.num_classes} classes)"))
    return spec
