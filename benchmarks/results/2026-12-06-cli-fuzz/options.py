"""Every `fedge` command and its options, read from the parsers themselves (the benchmarks and the
audit build theirs inside main(): parse_args is intercepted there)."""

from __future__ import annotations

import argparse
import importlib

from fedge.tools import cli


class _Caught(Exception):
    def __init__(self, parser):
        self.parser = parser


def _own_parser(module: str) -> argparse.ArgumentParser:
    real = argparse.ArgumentParser.parse_args

    def catch(self, *a, **k):
        raise _Caught(self)
    argparse.ArgumentParser.parse_args = catch
    try:
        importlib.import_module(module).main([])
    except _Caught as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.parse_args = real
    raise AssertionError(module)


def _describe(action: argparse.Action) -> dict:
    kind = "flag" if action.nargs == 0 else getattr(action.type, "__name__", "str") if action.type else "str"
    kind = {"out_file_arg": "path_arg", "seconds_arg": "float"}.get(kind, kind)  # the types cli_args gained
    return {"dest": action.dest, "flags": list(action.option_strings), "kind": kind, "required": action.required,
            "choices": list(action.choices) if action.choices else None, "nargs": action.nargs,
            "default": repr(action.default)}


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    opts = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = path + (name,)
                if full[:1] == ("bench",) and len(full) == 2:
                    yield from walk(_own_parser(cli.BENCHES[name]), full)
                elif full == ("audit", "leakage"):
                    yield from walk(_own_parser("fedge.tools.audit.leakage"), full)
                else:
                    yield from walk(sub, full)
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            opts.append(_describe(action))
    if path and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        yield " ".join(path), opts


def all_commands() -> dict[str, list[dict]]:
    return dict(walk(cli._parser()))


if __name__ == "__main__":
    import json

    print(json.dumps(all_commands(), indent=1))
