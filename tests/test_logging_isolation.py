"""No test leaves a log handler behind for the next (tests/conftest.py, _logging_as_it_was)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_cli_main_run_in_process_leaves_no_handler_on_its_closed_stream_for_later_tests():
    """CI printed "--- Logging error --- ValueError: I/O operation on closed file" many times: the
    root logger kept writing to the stream of a capsys long closed. logging_leak_cases.py runs
    both sides of that in one pytest (a process of its own: the order matters, and xdist would
    split a pair of tests here)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "logging_leak_cases.py")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
