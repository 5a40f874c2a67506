"""argparse types shared by the `fedge` commands: a value argparse refuses exits 2 with one
usage line that names the option, before the command imports or writes anything."""

from __future__ import annotations

import argparse

# Devices, rounds, steps, epochs or repeats past this are a typo, not a plan: 10**30 once
# started a run that could never end, or a traceback from numpy ("Maximum allowed dimension
# exceeded"). The wire's own cap on a task's epochs (edge_runtime/kernel/protocol.py).
MAX_COUNT = 1_000_000


def path_arg(text: str) -> str:
    """A file or folder path. An empty one is refused: Path("") is ".", so `--out ''` wrote into
    the current folder, and `--json ''`, `--config ''` or `--model ''` were read as "not given"."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; name a file or folder (e.g. ./runs)")
    return text
