"""Files a command names after its `--json` path (`out.md` and `out.png` beside `out.json`):
the user named the JSON, not them, so one that is already there and is not fedge's is never
replaced. The command refuses before it runs (ForeignOutput, exit 2), not after an hour's grid.

Fedge's own are recognised by what fedge writes into them: a Markdown report's first line
(`# fedge ...`), a PNG's `Software` text chunk (`fedge <command>`, png_metadata). Files from
before fedge marked its PNGs are taken as fedge's when the JSON beside them is fedge's output of
the same command: a rerun into the same path replaces its own plot, as it always did."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.output_dir import ForeignOutput, dangling_link, starts_with

MARKDOWN_HEADER = b"# fedge "
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK = struct.Struct(">I4s")  # length, type; then data and a CRC of 4 bytes
_MAX_TEXT_CHUNK = 1 << 16  # a Software chunk is a few bytes: anything longer is not ours
_MAX_OWN_JSON_BYTES = 1 << 30  # the largest JSON a fedge command writes is a few MB


def png_metadata(command: str) -> dict[str, str]:
    """savefig's metadata for a plot fedge writes: marks it as fedge's (png_software)."""
    return {"Software": f"fedge {command}"}


def png_software(path: Path) -> str | None:
    """The `Software` tEXt chunk of a PNG (before its image data), or None: no PNG, no chunk."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != _PNG_SIGNATURE:
                return None
            while True:
                head = f.read(_CHUNK.size)
                if len(head) < _CHUNK.size:
                    return None
                length, kind = _CHUNK.unpack(head)
                if kind in (b"IDAT", b"IEND"):
                    return None
                if kind == b"tEXt" and length <= _MAX_TEXT_CHUNK:
                    key, _, text = f.read(length).partition(b"\x00")
                    if key == b"Software":
                        return text.decode("latin-1")
                    f.seek(4, 1)
                else:
                    f.seek(length + 4, 1)
    except OSError:
        return None


def _marked(path: Path) -> bool:
    if path.suffix == ".md":
        return starts_with(path, MARKDOWN_HEADER)
    if path.suffix.lower() == ".png":  # simulate's --plot and the audit's --png take .PNG too
        return (png_software(path) or "").startswith("fedge ")
    return False


def _own_json(json_path: Path, is_own: Callable[[dict], bool]) -> bool:
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("schema") == 1 and is_own(doc)


def _could_be_ours(path: Path) -> bool:
    """Whether a file at an output path the user named may be one fedge wrote there: a marked PNG
    (`--png`, `--plot`), else a JSON document (`--json`). A JSON file of the user's own still
    passes (nothing in a document tells whose it is), but a text, binary or source file named by
    mistake (`--json README.md`) was replaced by the run's JSON."""
    if path.suffix.lower() == ".png":
        return _marked(path)
    try:
        if path.stat().st_size > _MAX_OWN_JSON_BYTES:
            return False
        json.loads(path.read_bytes())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return False
    return True


def output_file_problem(path: str | Path) -> str | None:
    """Why no file can be written at `path`, or None: a folder or no regular file stands there
    (`--json /dev/null`: the write renames a file over it), a file stands where
    one of its folders goes (`--json notes.txt/run.json`), or the nearest folder that exists takes
    no new entry (/proc, a read-only mount): each was found by the write after the run. The last
    is asked by making and removing an empty folder there (as root, a mode says nothing)."""
    path = Path(path)
    link = dangling_link(path)
    if link:
        return link
    if path.is_dir():
        return f"{path} is a folder; name a file"
    if path.exists() and not path.is_file():  # /dev/null, a FIFO: the write's rename replaced the node
        return f"{path} is not a regular file (a device, a pipe or a socket); name a file"
    if path.is_file() and not _could_be_ours(path):
        kind = "a PNG fedge marked as its own" if path.suffix.lower() == ".png" else "a JSON document"
        return (f"{path} exists and is not {kind}, so fedge did not write it (fedge never replaces a file "
                "it did not write): move it, or name another file")
    for folder in path.parents:
        if folder.exists():
            if not folder.is_dir():
                return f"{folder} is a file, not a folder"
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".fedge-write-check-", dir=folder))
            except OSError as exc:
                return f"nothing can be written under {folder} ({exc.strerror})"
            return None
    return None


def check_parent_folder(path: str | Path, flag: str) -> None:
    """ConfigError when no file can be written at `path` (output_file_problem): found before a
    run, not by the write after it."""
    problem = output_file_problem(path)
    if problem:
        raise ConfigError(f"{flag} {path}: {problem}")


def check_beside(json_path: str | Path, suffixes: Iterable[str], command: str,
                 is_own: Callable[[dict], bool] | None) -> None:
    """Raise ForeignOutput when a file named `json_path` with one of `suffixes` exists and is not
    fedge's. `is_own(doc)` tells this command's JSON (the legacy rule above); None for a command
    that never wrote unmarked files there."""
    json_path = Path(json_path)
    check_parent_folder(json_path, "--json")
    suffixes = tuple(suffixes)
    paths = [json_path.with_suffix(s) for s in suffixes]
    if any(s != ".json" and p == json_path for s, p in zip(suffixes, paths)):  # `--json out.png` once
        # wrote the run there, then the plot over it (".json" is the --out DIR's run.json itself)
        raise ForeignOutput(f"--json {json_path}: {command} writes its {json_path.suffix} beside the JSON under "
                            "the same name, over the JSON; name a .json file")
    links = [p for p in paths if p.is_symlink()]  # writing would follow it to wherever it points
    taken = [p for p in paths if p.exists() and p not in links and not _marked(p)]
    if taken and is_own is not None and _own_json(json_path, is_own):
        taken = []
    taken += links
    if taken:
        names = ", ".join(str(p) for p in taken)
        raise ForeignOutput(f"{command} writes {names} beside --json {json_path}, and fedge did not write "
                            f"{'it' if len(taken) == 1 else 'them'} (fedge never replaces a file it did not "
                            "write): move it, or name another --json")


def check_own_output(out: Path, is_ours, not_ours: str) -> None:
    """ConfigError unless `out` may take a command's file: nothing there, or a file is_ours(out)
    says the command wrote (a rerun replaces its own; `not_ours` says what it is not, when it is
    not). The write renames a file over the path, so naming someone's file replaced it."""
    if out.is_file():
        try:
            ours = is_ours(out)
        except Exception:  # noqa: BLE001 - any file the command cannot read is not its own
            ours = False
        if not ours:
            raise ConfigError(f"--out {out}: the file there is {not_ours}, so fedge did not write it "
                              "(fedge never replaces a file it did not write): move it, or name another file")
        return
    problem = output_file_problem(out)
    if problem:
        raise ConfigError(f"--out {out}: {problem}")
