"""The data files probe.py gives to fedge's two loaders: each builder writes one kind of file (or
folder) a user or another tool could plausibly produce into `root` and returns the paths."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

KEYS = ("x_train", "y_train", "x_test", "y_test")

def blobs(seed: int, n: int = 40, width: int = 16, classes: int = 3) -> dict[str, np.ndarray]:
    """Separable unit-scale blobs, 80/20 split, labels 0..classes-1 int64."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(classes, width)) * 2
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = (centres[y] + rng.normal(size=(n, width))).astype(np.float32)
    k = int(n * 0.8)
    return {"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:]}


def folder(root: Path, n: int = 3, **override) -> list[Path]:
    """n devices d0..d{n-1}; `override` (callables of the device's arrays) changes d0 only."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = blobs(i)
        if i == 0:
            for k, fn in override.items():
                a[k] = fn(a)
            a = {k: v for k, v in a.items() if v is not None}
        p = root / f"d{i}.npz"
        np.savez(p, **a)
        paths.append(p)
    return paths


def all_devices(root: Path, n: int = 3, **override) -> list[Path]:
    """n devices, `override` applied to every one (a whole folder in one format)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = blobs(i)
        for k, fn in override.items():
            a[k] = fn(a)
        p = root / f"d{i}.npz"
        np.savez(p, **a)
        paths.append(p)
    return paths


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def lying_header(root: Path) -> list[Path]:
    """d0's x_train.npy claims (2**27, 4) float32 (2 GiB) but holds 64 bytes of data."""
    paths = folder(root)
    a = blobs(0)
    with zipfile.ZipFile(paths[0], "w") as zf:
        zf.writestr("x_train.npy", npy_header((2 ** 27, 4)) + bytes(64))
        for k in KEYS[1:]:
            zf.writestr(f"{k}.npy", _npy(a[k]))
    return paths


def _npy(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def zip_bomb(root: Path, lie: bool = False) -> list[Path]:
    """d0's x_train.npy: a true header for (2**28 / 4 * 3, 4) float32 zeros = 3 GiB, deflated
    to a few MB. lie: the zip's directory claims the member is 1 KiB uncompressed."""
    paths = folder(root)
    a = blobs(0)
    rows = 3 * (2 ** 28) // 4
    head = npy_header((rows, 4))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 24)
    crc = zlib.crc32(head)
    parts = [comp.compress(head)]
    left = rows * 16
    while left:
        n = min(left, len(chunk))
        parts.append(comp.compress(chunk[:n]))
        crc = zlib.crc32(chunk[:n], crc)
        left -= n
    parts.append(comp.flush())
    data = b"".join(parts)
    size = len(head) + rows * 16
    with zipfile.ZipFile(paths[0], "w") as zf:
        for k in KEYS[1:]:
            zf.writestr(f"{k}.npy", _npy(a[k]))
    _append_raw_member(paths[0], "x_train.npy", data, crc, 1024 if lie else size)
    return paths


def _append_raw_member(path: Path, name: str, deflated: bytes, crc: int, size: int) -> None:
    """Add an already-deflated member to a zip (zipfile cannot write one without inflating it).
    Zip64 when needed so the member's true size can be stated."""
    import struct
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        body = path.read_bytes()
    # Rebuild: existing local entries + the new one + a fresh central directory.
    end = struct.unpack("<I", body[-6:-2])[0]  # offset of the central directory (no comment, no zip64)
    entries = body[:end]
    offset = len(entries)
    zip64 = size >= 0xFFFFFFFF
    extra = struct.pack("<HHQQ", 1, 16, size, len(deflated)) if zip64 else b""
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, 8, 0, 0, crc,
                        0xFFFFFFFF if zip64 else len(deflated), 0xFFFFFFFF if zip64 else size,
                        len(name), len(extra)) + name.encode() + extra
    entries += local + deflated
    cd = b""
    for i in infos:
        cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, i.compress_type, 0, 0, i.CRC,
                          i.compress_size, i.file_size, len(i.filename), 0, 0, 0, 0, 0o600 << 16,
                          i.header_offset) + i.filename.encode()
    cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if zip64 else 20, 45 if zip64 else 20, 0, 8, 0, 0,
                      crc, 0xFFFFFFFF if zip64 else len(deflated), 0xFFFFFFFF if zip64 else size,
                      len(name), len(extra), 0, 0, 0, 0o600 << 16, offset) + name.encode() + extra
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(infos) + 1, len(infos) + 1, len(cd), len(entries), 0)
    path.write_bytes(entries + cd + eocd)


def truncated(root: Path) -> list[Path]:
    paths = folder(root)
    b = paths[0].read_bytes()
    paths[0].write_bytes(b[: len(b) // 2])
    return paths


def npy_renamed(root: Path) -> list[Path]:
    paths = folder(root)
    np.save(root / "x.npy", blobs(0)["x_train"])
    os.replace(root / "x.npy", paths[0])
    return paths


def other_keys(root: Path) -> list[Path]:
    paths = folder(root)
    a = blobs(0)
    np.savez(paths[0], X=a["x_train"], y=a["y_train"])
    return paths


def symlink_outside(root: Path) -> list[Path]:
    paths = folder(root)
    outside = root.parent / f"{root.name}-elsewhere.npz"
    os.replace(paths[0], outside)
    paths[0].symlink_to(outside)
    return paths


def subfolder(root: Path) -> list[Path]:
    paths = folder(root)
    (root / "x.npz").mkdir()
    return [root / "x.npz", *paths]


def renamed(root: Path, name: str) -> list[Path]:
    paths = folder(root)
    new = root / name
    os.replace(paths[0], new)
    return [new, *paths[1:]]


def hidden(root: Path) -> list[Path]:
    paths = folder(root)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (root / "._d0.npz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(100))
    return [root / "._d0.npz", *paths]


def fifo(root: Path) -> list[Path]:
    paths = folder(root)
    paths[0].unlink()
    os.mkfifo(paths[0])
    return paths


def empty(root: Path) -> list[Path]:
    root.mkdir(parents=True)
    return [root / "absent.npz"]


def empty_file(root: Path) -> list[Path]:
    paths = folder(root)
    paths[0].write_bytes(b"")
    return paths


def one_example(root: Path) -> list[Path]:
    root.mkdir(parents=True)
    a = blobs(0)
    p = root / "only.npz"
    np.savez(p, x_train=a["x_train"][:1], y_train=a["y_train"][:1], x_test=np.zeros((0, 16), np.float32),
             y_test=np.zeros(0, np.int64))
    return [p]


def many(root: Path, n: int = 20000) -> list[Path]:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    centres = np.random.default_rng(99).normal(size=(3, 16)) * 2
    paths = []
    for i in range(n):
        y = rng.integers(0, 3, 6)
        x = (centres[y] + rng.normal(size=(6, 16))).astype(np.float32)
        p = root / f"dev{i:05d}.npz"
        np.savez(p, x_train=x[:5], y_train=y[:5], x_test=x[5:], y_test=y[5:])
        paths.append(p)
    return paths


def image(a, layout: str, dtype=np.float32) -> np.ndarray:
    """x of 48 values as images: nchw (n, 3, 4, 4) or nhwc (n, 4, 4, 3)."""
    x = np.pad(a, ((0, 0), (0, 32)))  # 16 -> 48 values
    x = x.reshape(len(a), 3, 4, 4)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) if layout == "nhwc" else x).astype(dtype)


def u8(x: np.ndarray) -> np.ndarray:
    return np.clip((x - x.min()) / (np.ptp(x) + 1e-9) * 255, 0, 255).astype(np.uint8)


def _mixed_layout(r: Path) -> list[Path]:
    paths = all_devices(r, x_train=lambda a: image(a["x_train"], "nchw"), x_test=lambda a: image(a["x_test"], "nchw"))
    a = blobs(0)
    np.savez(paths[0], x_train=image(a["x_train"], "nhwc"), y_train=a["y_train"],
             x_test=image(a["x_test"], "nhwc"), y_test=a["y_test"])
    return paths


def _images_vs_flat(r: Path) -> list[Path]:
    return folder(r, x_train=lambda a: a["x_train"].reshape(-1, 4, 4), x_test=lambda a: a["x_test"].reshape(-1, 4, 4))
