"""Run one arm64 program in the cached userland (aarch64_rootfs.py) under qemu-user, on what
looks like a Raspberry Pi 4.

Every program is started through qemu-aarch64-static by name, because binfmt_misc may not be
registered (it is not in this container): so a guest program cannot start another arm64
program itself. Hence python is called with the script to run (`python .../bin/fedge`, not
`fedge`), and the venv is made --without-pip (pip runs from its wheel instead).

Each run gets a private mount namespace (`unshare -m`, gone when the run ends) in which /proc
is the kernel's and the rest of the board is a Pi 4's, made up in a folder of the run:
  - /proc/cpuinfo and /sys/devices/system/cpu: ONNX Runtime's CPU probe (pytorch/cpuinfo)
    reads both, and with the host's x86 ones together it segfaults under qemu-user (measured:
    onnxruntime 1.32.0, qemu 7.2). Either a Pi's cpuinfo or a Pi's cpu folder alone avoids it;
    both are given so the guest looks like one board.
  - /sys/class/power_supply (empty: mains) and one thermal zone: psutil's battery reading
    fails where the power_supply folder is missing, which no real device lacks; a fixed board
    also keeps the host's batteries, links and temperatures out of the probe.
  - host folders are bound where the guest expects them (the run's work folder, the wheels).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.packaging.aarch64_rootfs import QEMU

CORES = 4
PI4_CORE = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3
"""
PI4_BOARD = "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"

# Runs on the host inside the new mount namespace: $1 rootfs, $2 fake board, $3 qemu in the
# guest, then pairs HOST GUEST to bind until "--", then the guest's argv.
ENTER = r"""
set -e
root=$1 board=$2 qemu=$3
shift 3
mount -t proc proc "$root/proc"
mount --bind "$board/cpuinfo" "$root/proc/cpuinfo"
mount --bind "$board/sys" "$root/sys"
while [ "$1" != -- ]; do
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  shift 2
done
shift
exec chroot "$root" "$qemu" "$@"
"""

# The host's mount and chroot (sbin) and the guest's programs find each other on one PATH.
GUEST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8",
             "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}


def write_fake_board(folder: Path) -> Path:
    """A Pi 4's cpuinfo and the parts of its /sys that the device runtime's dependencies read."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpuinfo").write_text("\n".join(PI4_CORE.format(n=n) for n in range(CORES)) + "\n" + PI4_BOARD)
    cpu = folder / "sys/devices/system/cpu"
    for n in range(CORES):
        (cpu / f"cpu{n}").mkdir(parents=True, exist_ok=True)
    for name in ("online", "possible", "present"):
        (cpu / name).write_text(f"0-{CORES - 1}\n")
    (folder / "sys/class/power_supply").mkdir(parents=True, exist_ok=True)  # mains, no battery
    zone = folder / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("45000\n")  # millidegrees, as the kernel writes them
    return folder


def run_guest(rootfs: Path, board: Path, argv: list[str], binds: dict[Path, str],
              timeout: float = 600) -> subprocess.CompletedProcess:
    """argv[0] is a path in the guest; binds maps host folders to guest paths."""
    pairs = [str(part) for host, guest in binds.items() for part in (host, guest)]
    command = ["unshare", "--mount", "sh", "-c", ENTER, "enter", str(rootfs), str(board),
               f"/usr/bin/{QEMU.name}", *pairs, "--", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=GUEST_ENV)
