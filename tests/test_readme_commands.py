"""The README's commands and paths against the code: what a user copies must exist.

Mechanical and cheap: nothing runs. Every repository path that the README, docs/ and the
READMEs of hardware/ejabberd and tools/broker/files name in code exists. Every `fedge ...`
command they show (```sh blocks, plain ``` blocks and inline code, a span broken over lines
included) names a subcommand the CLI has and only options its parser has, spelled in full,
with a value its choices allow. The simulator's option table gives each option the default a
run without it gets. The walkthrough's commands also run (tests/tools/test_readme_walkthrough.py),
and the TOML examples load (tests/test_readme_config.py).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from fedge.coordinator.config import load_coordinator_config
from fedge.edge_runtime.kernel.configfile import load_toml
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools import cli
from fedge.tools.simulate.cli import COORDINATOR_FLAGS, TYPED_ONLY, build_config
from fedge.tools.simulate.config import SimConfig

REPO = Path(__file__).resolve().parents[1]
# The user's documents (benchmarks/results/ keeps records of past runs, as they were run).
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "hardware/ejabberd/README.md",
        REPO / "tools/broker/files/README.md"]
TOP = ("benchmarks", "coordinator", "docs", "edge_runtime", "examples", "hardware", "models", "tests", "tools")
FENCE = re.compile(r"^```(\w*)$")


def prose_and_shell(text: str) -> tuple[str, list[str]]:
    """The text outside code blocks, and the lines of its ```sh and plain ``` blocks (a trailing
    backslash joins the next line, a `  # comment` is cut)."""
    prose, shell, lang, pending = [], [], None, ""
    for line in text.splitlines():
        if match := FENCE.match(line.strip()):
            lang = match.group(1) if lang is None else None
            continue
        if lang is None:
            prose.append(line)
        elif lang in ("sh", ""):
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            shell.append(re.sub(r"\s+#\s.*$", "", pending + line).strip())
            pending = ""
    return "\n".join(prose), shell


def fedge_commands(text: str) -> list[str]:
    """Every `fedge ...` command of a Markdown text, as one line each."""
    prose, shell = prose_and_shell(text)
    found = [" ".join(m.group(1).split()) for m in re.finditer(r"`((?:[^`\s]*/)?fedge\s[^`]+)`", prose)]
    for line in shell:  # a pipe or && ends a command; `a|b` inside a [--flag a|b] does not
        found += [" ".join(part.rstrip().rstrip("&").split()) for part in re.split(r"&&|\s\|\s|;\s", line)
                  if re.match(r"^(\S*/)?fedge\s", part.strip())]
    return found


def expand(text: str) -> list[str]:
    """Shell brace expansion: `a.{json,png}` is a.json and a.png."""
    match = re.search(r"\{([^{}]*)\}", text)
    if not match:
        return [text]
    return [x for alt in match.group(1).split(",") for x in expand(text[:match.start()] + alt + text[match.end():])]


def named_paths(text: str) -> list[str]:
    """The repository paths (under a top folder) that a Markdown text names in inline code."""
    prose, _ = prose_and_shell(text)
    out = []
    for span in re.findall(r"`([^`]+)`", prose):
        for word in re.split(r"[\s()]+", span):
            for name in expand(word.strip("'\",;")):
                if match := re.match(rf"^(?:\./)?((?:{'|'.join(TOP)})/[\w./*<>-]*?)[.:,;]*$", name):
                    out.append(match.group(1))
    return out


def test_every_make_target_the_docs_name_is_in_the_makefile():
    targets = set(re.findall(r"^([\w.-]+):", (REPO / "Makefile").read_text(encoding="utf-8"), re.M))
    named = set()
    for doc in DOCS:
        prose, shell = prose_and_shell(doc.read_text(encoding="utf-8"))
        for code in re.findall(r"`([^`]+)`", prose) + shell:
            named |= set(re.findall(r"^make ([a-z][\w-]*)", code.strip()))
    assert {"demo", "test", "wheel"} <= named
    assert named <= targets, named - targets


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser


def own_parser(module: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a benchmark or the audit builds in its main() (they own their options)."""
    def stop(self, args=None, namespace=None):
        raise _Parsed(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", stop)
        with pytest.raises(_Parsed) as parsed:
            importlib.import_module(module).main([])
    return parsed.value.parser


def resolve(words: list[str], monkeypatch) -> tuple[argparse.ArgumentParser, list[str], str]:
    """The parser that reads `words` (after `fedge`), the words left for it, and its command."""
    parser, path = cli._parser(), []
    _, rest = cli._split_globals(words)
    while rest and rest[0] in subcommands(parser):
        path.append(rest.pop(0))
        if path[0] == "bench" and len(path) == 2 and path[1] in cli.BENCHES:
            return own_parser(cli.BENCHES[path[1]], monkeypatch), rest, " ".join(path)
        if path == ["audit", "leakage"]:
            return own_parser("fedge.tools.audit.leakage", monkeypatch), rest, " ".join(path)
        parser = subcommands(parser)[path[-1]]
    return parser, rest, " ".join(path)


def command_problems(command: str, monkeypatch) -> list[str]:
    """What in a README command the CLI does not have; [optional] brackets are read as plain words."""
    words = shlex.split(command.replace("[", " ").replace("]", " "))[1:]
    if not words or words[0] in ("...", "<command>"):
        return []
    head, main = cli._split_globals(words)[0], cli._parser()
    problems = [f"no global option {w}" for w in head if w.startswith("-") and w not in main._option_string_actions]
    parser, rest, path = resolve(words, monkeypatch)
    if subcommands(parser):  # a group (`fedge bench -h`): what follows must be one of its commands
        known = rest and (rest[0].startswith("-") or rest[0] in ("...", "<command>"))  # -h, or a placeholder
        return problems + ([f"{path}: no subcommand {rest[0]!r}"] if rest and not known else [])
    for i, word in enumerate(rest):
        if not word.startswith("--"):
            continue
        action = parser._option_string_actions.get(word.split("=")[0])
        if action is None:  # argparse would take an abbreviation; the README spells options in full
            problems.append(f"{path}: no option {word}")
        elif action.choices and action.nargs is None and i + 1 < len(rest):
            for value in rest[i + 1].split("|"):  # `--data a|b`: either
                if value.isupper() or value.startswith("<") or value.startswith("-"):
                    continue  # a placeholder (DIR, <file>) or the next option
                if (action.type or str)(value) not in action.choices:
                    problems.append(f"{path}: {word} {value!r} is not one of {list(action.choices)}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_repository_path_the_docs_name_exists(doc):
    paths = named_paths(doc.read_text(encoding="utf-8"))
    missing = [p for p in paths if not (list(REPO.glob(re.sub(r"<[^>]*>", "*", p))) if set(p) & set("*<>")
                                        else (REPO / p).exists())]
    assert paths if doc == DOCS[0] else True
    assert not missing, f"{doc.name} names paths the repository does not have: {missing}"


def test_every_fedge_command_the_readme_shows_has_its_options(monkeypatch):
    commands = sorted(set(c for doc in DOCS for c in fedge_commands(doc.read_text(encoding="utf-8"))))
    assert len(commands) > 60  # 75 different ones on 2026-12-06
    problems = [f"`{c}`: {p}" for c in commands for p in command_problems(c, monkeypatch)]
    assert not problems, "\n".join(problems)


def test_the_command_check_sees_a_wrong_option_a_wrong_choice_and_a_wrong_subcommand(monkeypatch):
    assert command_problems("fedge simulate --rounds 2 --dataset digits [--quiet]", monkeypatch) == []
    assert command_problems("fedge bench async --json a.json [--data mnist|synthetic]", monkeypatch) == []
    assert command_problems("fedge simulate --round 2", monkeypatch) == ["simulate: no option --round"]
    assert command_problems("fedge bench privacy --json p.json [--data mnist]", monkeypatch) == [
        "bench privacy: --data 'mnist' is not one of ['synthetic', 'label-skew']"]
    assert command_problems("fedge device probes", monkeypatch) == ["device: no subcommand 'probes'"]
    assert command_problems("fedge --log-format json --quiet simulate", monkeypatch) == ["no global option --quiet"]
    text = "`fedge bench\nscale --size 3` and\n```sh\nfedge data split --out d \\\n  --device 2   # two\n```\n"
    assert fedge_commands(text) == ["fedge bench scale --size 3", "fedge data split --out d --device 2"]
    assert [p for c in fedge_commands(text) for p in command_problems(c, monkeypatch)] == [
        "bench scale: no option --size", "data split: no option --device"]
    assert named_paths("`tools/a.py` and `benchmarks/results/x.{json,png}`, not runs/y") == [
        "tools/a.py", "benchmarks/results/x.json", "benchmarks/results/x.png"]


def simulate_table() -> list[tuple[list[str], list[str]]]:
    """The simulator's option table: (options of a row, their defaults), the defaults split on
    commas when a row names several options."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    rows = text[text.index("| option | default | meaning |"):].splitlines()[2:]
    out = []
    for row in rows:
        if not row.startswith("|"):
            break
        option, default, _ = [cell.strip() for cell in row.strip("|").split("|", 2)]
        flags = re.findall(r"`(--[\w-]+)", option)
        defaults = [d.strip() for d in default.split(",")] if len(flags) > 1 and ";" not in default else [default]
        out.append((flags, defaults))
    return out


def simulate_table_rows() -> list[tuple[str, str]]:
    """(option, default) of each table row that names one option."""
    return [(flags[0], defaults[0]) for flags, defaults in simulate_table() if len(flags) == 1]


def effective_default(flag: str, parser: argparse.ArgumentParser, args, cfg):
    """What a run without `flag` uses: argparse's default, or the preset coordinator's field."""
    dest = parser._option_string_actions[flag].dest
    value = getattr(args, dest)
    if value is None and dest in COORDINATOR_FLAGS:
        coordinator = cfg.coordinator
        owner = next((getattr(coordinator, part) for part in ("hyper", "compression", "robust")
                      if hasattr(getattr(coordinator, part), dest)), coordinator)
        value = getattr(owner, dest)
    elif value is None and dest in TYPED_ONLY:  # None on the command line so that typing it shows
        value = getattr(cfg, dest)
    return value


def test_the_simulate_option_table_gives_each_default_a_run_gets():
    parser = subcommands(cli._parser())["simulate"]
    args = parser.parse_args([])
    cfg = build_config(args, "runs/sim")
    wrong, listed = [], set()
    for flags, defaults in simulate_table():
        listed |= set(flags)
        for flag, documented in zip(flags, defaults):
            assert flag in parser._option_string_actions, f"the table lists {flag}, which simulate does not take"
            value = effective_default(flag, parser, args, cfg)
            word = re.sub(r"\s*\(.*\)$", "", documented).strip("`")  # `0.9 (0 on ort-training)`: 0.9
            if isinstance(value, bool):
                ok = word in ("", "off") if value is False else word not in ("off",)
            elif value is None:
                ok = not re.fullmatch(r"[\d.]+", word)  # no number for an option that is off unless given
            else:
                ok = word == str(value) or (re.fullmatch(r"[\d.]+", word) and float(word) == float(value))
            if not ok:
                wrong.append(f"{flag}: README {documented!r}, a run gets {value!r}")
    assert not wrong, wrong
    assert len(listed) > 40
    # `600 (30 with mqtt)`: the deadline the preset gets over a real broker
    mqtt = parser.parse_args(["--transport", "mqtt"])
    documented = dict(simulate_table_rows())["--round-deadline"]
    assert documented == f"600 ({build_config(mqtt, 'runs/sim').coordinator.round_deadline_s:g} with mqtt)"


def test_every_pytest_marker_is_named_in_the_tests_section():
    """`ejabberd` was a marker (pyproject.toml) the README's list of markers left out."""
    markers = [m.split(":")[0] for m in load_toml(REPO / "pyproject.toml")["tool"]["pytest"]["ini_options"]["markers"]]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    tests = readme[readme.index("\n## Tests\n"):]
    assert len(markers) >= 5
    assert not [m for m in markers if f"`{m}`" not in tests], markers


def test_every_readme_coordinator_example_is_a_config_fedge_simulate_runs(tmp_path):
    """`fedge simulate --config FILE` reads a file's [coordinator] table (README, The simulator);
    each README example with one loads there too, and the simulator takes it, but for the
    asynchronous one, which it refuses by name as the README says ("runs sync rounds only")."""
    blocks = [b for b in re.findall(r"^```toml\n(.*?)^```", DOCS[0].read_text(encoding="utf-8"), re.S | re.M)
              if re.search(r"^\[coordinator[].]", b, re.M)]
    assert len(blocks) >= 6
    for i, block in enumerate(blocks):
        path = tmp_path / f"example-{i}.toml"
        path.write_text(block, encoding="utf-8")
        coordinator = load_coordinator_config(path)
        if coordinator.mode == "async":
            with pytest.raises(ConfigError, match="sync rounds only"):
                SimConfig(coordinator=coordinator)
        else:
            SimConfig(coordinator=coordinator)


def every_command(monkeypatch) -> list[tuple[str, argparse.ArgumentParser]]:
    """(command, parser) for `fedge` itself and each of its commands, the benchmarks' and the
    audit's own parsers included."""
    out, todo = [], [("", cli._parser())]
    while todo:
        path, parser = todo.pop()
        out.append((path, parser))
        for name, sub in subcommands(parser).items():
            command = f"{path} {name}".strip()
            if command.startswith("bench ") and name in cli.BENCHES:
                sub = own_parser(cli.BENCHES[name], monkeypatch)
            elif command == "audit leakage":
                sub = own_parser("fedge.tools.audit.leakage", monkeypatch)
            todo.append((command, sub))
    return out


def undocumented_options(commands, text: str) -> list[str]:
    """The options (by their long name) of which the docs' `text` names no spelling."""
    missing = []
    for command, parser in commands:
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
                continue
            spellings = [s for s in action.option_strings if s not in ("-h", "--help")]
            if spellings and not any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", text) for s in spellings):
                missing.append(f"fedge {command} {max(spellings, key=len)}".replace("  ", " "))
    return missing


def test_every_option_of_every_command_is_named_in_the_docs(monkeypatch):
    """The other direction of the command check: an option the parser has and no document names
    (`fedge bench train-step --threads`, `fedge device init --state-dir`) is one a user finds only
    in -h. The README, docs/ and the two tool READMEs count (`fedge provision broker --conf-dir` is
    the production broker README's)."""
    commands = every_command(monkeypatch)
    assert len(commands) > 30 and {"bench train-step", "audit leakage", "device init"} <= {c for c, _ in commands}
    missing = undocumented_options(commands, "\n".join(doc.read_text(encoding="utf-8") for doc in DOCS))
    assert not missing, missing
    assert undocumented_options(commands, "") and "fedge simulate --server-tau" in undocumented_options(commands, "")
