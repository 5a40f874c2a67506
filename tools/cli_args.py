"""argparse types shared by the `fedge` commands: a value argparse refuses exits 2 with one
usage line that names the option, before the command imports or writes anything."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

# Devices, rounds, steps, epochs or repeats past this are a typo, not a plan: 10**30 once
# started a run that could never end, or a traceback from numpy ("Maximum allowed dimension
# exceeded"). The wire's own cap on a task's epochs (edge_runtime/kernel/protocol.py).
MAX_COUNT = 1_000_000
# Processes or threads one command starts (--workers, --threads): past the cores of any machine
# fedge runs on. `bench robustness --workers 10**30` was an OverflowError traceback.
MAX_PARALLEL = 1024
# A message or update size in KiB (--kb, --update-kb): the transport's default largest message,
# 64 MiB (edge_runtime/kernel/transport/settings.py). 10**30 was numpy's allocation traceback.
MAX_KIB = 64 << 10
# A benchmark's time limit (--timeout): a million seconds, 11.6 days, is past any phase's wait.
MAX_SECONDS = 1e6
# A benchmark's --seed: numpy's classic seed range. 10**30 reached the wire's int64 bound inside
# `bench scale`'s worker process (a traceback); -1 was numpy's ValueError traceback.
MAX_SEED = 2**32 - 1
# Linux's NAME_MAX and PATH_MAX: a longer name is an OSError (ENAMETOOLONG) at its first use.
_MAX_NAME_BYTES, _MAX_PATH_BYTES = 255, 4095


def path_arg(text: str) -> str:
    """A file or folder path. An empty one is refused: Path("") is ".", so `--out ''` wrote into
    the current folder, and `--json ''`, `--config ''` or `--model ''` were read as "not given".
    A name no file system takes (a part over 255 bytes, a path over 4,095) is refused too: it was
    an `OSError: File name too long` traceback wherever it was first used."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; name a file or folder (e.g. ./runs)")
    raw = os.fsencode(text)
    if len(raw) > _MAX_PATH_BYTES or max(len(part) for part in raw.split(b"/")) > _MAX_NAME_BYTES:
        raise argparse.ArgumentTypeError(f"{text[:40]!r}... is too long for a path (each name at most "
                                         f"{_MAX_NAME_BYTES} bytes, the whole at most {_MAX_PATH_BYTES})")
    return text


def out_file_arg(text: str) -> str:
    """A file a command writes when it ends (`--json`, `--png`): a path_arg where a file can be
    written. `bench heterogeneity --json DIR` or `--json /proc/x` failed only after the grid."""
    from fedge.tools.beside_json import output_file_problem

    problem = output_file_problem(path_arg(text))
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def int_in(low: int, high: int = MAX_COUNT) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high]. `--batch-size 10**30` once ran and wrote an
    error row with exit 0, and `provision broker --shards 10**30` ended in a traceback."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {low} and at most {high:,}")
        return value
    parse.__name__ = "int"  # the name --help and the probe see
    return parse


def int_list_arg(low: int, high: int = MAX_COUNT) -> Callable[[str], str]:
    """An argparse type: a comma list of integers each in [low, high], returned as given.
    `bench screening --inputs ''` or `--inputs a` was int()'s ValueError traceback."""
    one = int_in(low, high)

    def parse(text: str) -> str:
        for item in text.split(","):
            one(item)
        return text
    parse.__name__ = "int list"
    return parse


def seconds_arg(text: str) -> float:
    """A time limit in seconds: > 0 and at most MAX_SECONDS. `bench brokers --timeout 0` (or -1,
    nan) ran and ended in "only 0 of 20 messages arrived in nan s", a traceback; `bench ingest
    --timeout inf` or 1e30 in an OverflowError ("timestamp out of range for platform time_t")."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{value}: seconds must be > 0 and finite, at most {MAX_SECONDS:,.0f}")
    return value


def names_arg(text: str) -> str:
    """A comma list of names (`--models a,b`, `--profiles pi4,jetson`): one that names nothing
    (``''``, ``','``) is refused; it was taken as "none" and the command ran without the option,
    exit 0 (`bench train-step --models ''` timed nothing and wrote [])."""
    if not any(name.strip() for name in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give one name or a comma list")
    return text


def standardize_flags(p: argparse.ArgumentParser, on_help: str, off_help: str) -> None:
    """--standardize / --no-standardize, exclusive, into `standardize`: True, False, or None when
    neither is given (auto, tools/standardizing.py). `fedge simulate` and `fedge bench
    heterogeneity` share them, so the two spell and resolve them alike."""
    scaling = p.add_mutually_exclusive_group()
    scaling.add_argument("--standardize", action="store_true", default=None, help=on_help)
    scaling.add_argument("--no-standardize", dest="standardize", action="store_false", default=None, help=off_help)
