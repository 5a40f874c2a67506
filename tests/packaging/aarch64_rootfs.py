"""A Debian arm64 userland with Python, built from Debian's own arm64 packages and cached in the
checkout (.cache/aarch64-rootfs, gitignored) so that only the first run pays for it.

Built without running a single arm64 program: `debootstrap --foreign` downloads the packages
and unpacks the required ones; the rest (python3 and what it needs) are unpacked the same way
here. Their maintainer scripts never run, which a Python interpreter does not need; running
them (debootstrap's second stage) would need binfmt_misc to start arm64 programs from arm64
programs, and a container may not have it (this one does not). qemu-aarch64-static is copied
in so the chroot can start it (aarch64_guest.py).

Never deletes what fedge did not create: a cache folder is fedge's when it holds STAMP
(written last, after a complete build); a build in progress holds BUILDING from its first moment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the arm64 pip wheels must fit: bookworm's python3 is 3.11 and its libc6 is glibc 2.36.
PYTHON_VERSION = "3.11"
GLIBC = (2, 36)
INCLUDE = ("python3",)
LAYOUT = 1  # bump when the build below changes, so old caches are rebuilt
STAMP = "fedge-aarch64-rootfs.json"
BUILDING = "fedge-building"
QEMU = Path("/usr/bin/qemu-aarch64-static")
INSTALL_HINT = "apt-get install qemu-user-static debootstrap (Debian/Ubuntu), and run as root"


def missing_prerequisites() -> str | None:
    """Why this machine cannot build or enter the userland, or None when it can."""
    if os.geteuid() != 0:
        return "building and entering the arm64 userland needs root (debootstrap, chroot, mount)"
    if shutil.which("debootstrap") is None and not Path("/usr/sbin/debootstrap").exists():
        return f"no debootstrap; {INSTALL_HINT}"
    if not QEMU.exists():
        return f"no {QEMU}; {INSTALL_HINT}"
    return None


def cached_rootfs(cache: Path) -> Path:
    """The userland under cache/rootfs, built first when cache has none of this LAYOUT."""
    want = {"suite": SUITE, "mirror": MIRROR, "include": list(INCLUDE), "layout": LAYOUT}
    stamp = cache / STAMP
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return cache / "rootfs"
    if cache.exists() and not stamp.exists():
        raise FileExistsError(f"{cache} exists and fedge did not build it (no {STAMP}); move it away")
    building = cache.with_name(f"{cache.name}.building")
    _remove_own(building, BUILDING)
    building.mkdir(parents=True)
    (building / BUILDING).touch()
    try:
        _build(building / "rootfs")
        (building / STAMP).write_text(json.dumps(want))
        (building / BUILDING).unlink()
        _remove_own(cache, STAMP)  # an older layout's build
        building.rename(cache)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return cache / "rootfs"


def _remove_own(folder: Path, marker: str) -> None:
    if not folder.exists():
        return
    if not (folder / marker).exists():
        raise FileExistsError(f"{folder} exists and fedge did not create it (no {marker}); move it away")
    shutil.rmtree(folder)


def _build(rootfs: Path) -> None:
    step = subprocess.run(["debootstrap", "--arch=arm64", "--foreign", "--variant=minbase",
                           f"--include={','.join(INCLUDE)}", SUITE, str(rootfs), MIRROR],
                          capture_output=True, text=True, timeout=1800)
    if step.returncode != 0:  # its log is long; what went wrong is at the end
        raise RuntimeError(f"debootstrap failed ({step.returncode}):\n{(step.stdout + step.stderr)[-3000:]}")
    _unpack_base(rootfs)
    # In a container debootstrap makes /proc a link to the host's /proc; the guest mounts its own.
    if (rootfs / "proc").is_symlink():
        (rootfs / "proc").unlink()
        (rootfs / "proc").mkdir()
    shutil.copy2(QEMU, rootfs / "usr/bin" / QEMU.name)
    python = rootfs / "usr/bin" / f"python{PYTHON_VERSION}"
    if not python.exists():
        raise FileNotFoundError(f"{SUITE} no longer ships Python {PYTHON_VERSION}: update PYTHON_VERSION and GLIBC")


def _unpack_base(rootfs: Path) -> None:
    """Unpack what the first stage only downloaded (debootstrap/base), as the first stage unpacks:
    keeping the merged-/usr links (/bin -> usr/bin, ...) that a plain `dpkg-deb -x` would replace."""
    paths = dict(line.split(" ", 1) for line in (rootfs / "debootstrap/debpaths").read_text().splitlines())
    for package in (rootfs / "debootstrap/base").read_text().split():
        deb = rootfs / paths[package].strip().lstrip("/")
        tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "--keep-directory-symlink", "-C", str(rootfs)], stdin=tar.stdout, check=True)
        if tar.wait() != 0:
            raise subprocess.CalledProcessError(tar.returncode, ["dpkg-deb", "--fsys-tarfile", str(deb)])
