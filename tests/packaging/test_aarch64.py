"""The device install on arm64 (a Pi 4's userland under qemu-user): the wheel with [device]
installs from arm64 wheels, `fedge device probe` runs, and a real training task on the portable
backend (stock onnxruntime) gives what the same task gives on this x86_64 machine, to 1e-5.

The userland is built once and cached in .cache/aarch64-rootfs (aarch64_rootfs.py); each run
installs into a fresh venv in its own tmp folder, bound into the guest, so the cache stays as
built. Needs root, debootstrap and qemu-user-static: skipped without them, unless
FEDGE_REQUIRE_AARCH64=1 (CI, `make check-aarch64`), where that is an error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.packaging.aarch64_guest import run_guest, write_fake_board
from tests.packaging.aarch64_rootfs import cached_rootfs, missing_prerequisites
from tests.packaging.aarch64_wheels import download_device_wheels
from tests.packaging.task_inputs import max_difference, task_argv, task_result, write_task_inputs

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "aarch64-rootfs"  # gitignored; fedge makes it and nothing else there
TOLERANCE = 1e-5
WORK, WHEELS = "/mnt/work", "/mnt/wheels"  # where the run's folders appear in the guest
PYTHON = f"{WORK}/venv/bin/python"


@pytest.fixture(scope="module")
def rootfs() -> Path:
    why = missing_prerequisites()
    if why:
        if os.environ.get("FEDGE_REQUIRE_AARCH64") == "1":
            pytest.fail(f"{why} (FEDGE_REQUIRE_AARCH64=1 makes this an error)")
        pytest.skip(why)
    started = time.monotonic()
    found = cached_rootfs(CACHE)
    print(f"arm64 userland ready in {time.monotonic() - started:.1f} s ({CACHE})")
    return found


def _guest(rootfs: Path, board: Path, argv: list[str], work: Path, wheels: Path) -> subprocess.CompletedProcess:
    run = run_guest(rootfs, board, argv, {work: WORK, wheels: WHEELS})
    assert run.returncode == 0, f"{argv} failed ({run.returncode}):\n{run.stderr[-3000:]}"
    return run


@pytest.mark.slow
def test_the_device_install_on_arm64_probes_and_trains_as_on_x86_64(rootfs, wheel, tmp_path):
    started = time.monotonic()
    board = write_fake_board(tmp_path / "board")
    work, wheels = tmp_path / "work", download_device_wheels(wheel, tmp_path / "wheels")
    work.mkdir()
    (pip,) = wheels.glob("pip-*.whl")
    # --without-pip: making pip would start the venv's python from python (see aarch64_guest.py).
    _guest(rootfs, board, ["/usr/bin/python3", "-m", "venv", "--without-pip", f"{WORK}/venv"], work, wheels)
    _guest(rootfs, board, [PYTHON, f"{WHEELS}/{pip.name}/pip", "install", "-q", "--no-index", "--find-links", WHEELS,
                           f"{WHEELS}/{wheel.name}[device]"], work, wheels)
    machine = _guest(rootfs, board, [PYTHON, "-c", "import platform; print(platform.machine())"], work, wheels)
    assert machine.stdout.strip() == "aarch64"
    probe = _guest(rootfs, board, [PYTHON, f"{WORK}/venv/bin/fedge", "device", "probe", "--json"], work, wheels)
    assert "eligible" in json.loads(probe.stdout)["verdict"]

    model_id = write_task_inputs(work / "task")
    arm64 = task_result(_guest(rootfs, board, task_argv(PYTHON, f"{WORK}/task", model_id), work, wheels))
    assert arm64["importable"] == [], f"{arm64['importable']} installed on the device"
    # The reference: the same task in this test environment (x86_64), in a state folder of its own.
    x86_64 = task_result(subprocess.run(task_argv(sys.executable, str(work / "task"), model_id, state="state-x86_64"),
                                        capture_output=True, text=True, timeout=300))
    gap = max_difference(arm64, x86_64)
    print(f"arm64 vs x86_64: loss {arm64['loss']!r} vs {x86_64['loss']!r}, largest difference {gap:.3g}; "
          f"install, probe and task in {time.monotonic() - started:.1f} s")
    assert gap <= TOLERANCE
