"""A command whose stdout reader has gone (`fedge protocol-doc | head -1`) ends quietly with
status 1, and any other broken pipe still surfaces. Oracle: the process's own stderr and status."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _fedge_into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before the first byte
    try:
        return subprocess.run([sys.executable, "-m", "fedge.tools.cli", *argv], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [("protocol-doc",), ("device", "probe")])
def test_a_closed_stdout_pipe_ends_with_status_1_and_no_traceback(argv):
    done = _fedge_into_a_closed_pipe(*argv)
    assert done.returncode == 1 and done.stderr == ""


def test_the_same_command_into_an_open_pipe_writes_everything():
    done = subprocess.run([sys.executable, "-m", "fedge.tools.cli", "protocol-doc"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "" and len(done.stdout.splitlines()) > 50


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden():
    """stdout here is pytest's capture, whole: a BrokenPipeError is some other pipe's or socket's."""
    from fedge.tools import cli

    def breaks():
        raise BrokenPipeError("a socket of the command's own")

    with pytest.raises(BrokenPipeError):
        cli._guarded(cli._parser().parse_args(["protocol-doc"]), breaks)
