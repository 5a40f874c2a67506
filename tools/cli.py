"""The `fedge` command. Subcommands import their modules lazily, so a device install never
loads the simulator, and `fedge --help` stays fast."""

from __future__ import annotations

import argparse
import logging
import sys

from edge_runtime.errors import FedgeError


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "train-step"]:  # the benchmark owns its options
        from tools.bench.train_step import main as bench_main

        return bench_main(argv[2:]) or 0
    parser = argparse.ArgumentParser(prog="fedge", description="Federated training at the edge.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="run a simulated fleet in one process")
    from tools.simulate.cli import add_arguments

    add_arguments(p)

    p = sub.add_parser("build-artifacts", help="build a model's ONNX graphs, ORT artifacts and manifest")
    p.add_argument("spec", help="spec TOML file or built-in name (e.g. mnist-mlp-lora)")
    p.add_argument("outdir")
    p.add_argument("--ort-training", choices=("auto", "yes", "no"), default="auto",
                   help="also generate onnxruntime-training artifacts (needs the training build)")

    p = sub.add_parser("bench", help="benchmarks that write JSON")
    bench = p.add_subparsers(dest="bench", required=True)
    bench.add_parser("train-step", help="time one training step per backend (see: fedge bench train-step -h)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args)
    except FedgeError as exc:
        print(f"fedge: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def _dispatch(args) -> int:
    if args.command == "simulate":
        from tools.simulate.cli import run

        return run(args)
    if args.command == "build-artifacts":
        from models.build import build_artifacts
        from models.spec import load_spec

        manifest = build_artifacts(load_spec(args.spec), args.outdir,
                                   ort_training={"auto": None, "yes": True, "no": False}[args.ort_training])
        print(f"built {manifest.name} (model_id {manifest.model_id}) in {args.outdir}: {', '.join(sorted(manifest.files))}")
        return 0
    raise AssertionError(args)


if __name__ == "__main__":
    sys.exit(main())
