"""A data .npz that someone else made (edge_runtime/data_file.py), read by both loaders: the
device's own file (device_config.load_local_data) and each of a `fedge simulate --data` folder's
(tools/datasets.load_npz_dir). Damage is a DatasetError naming the file, found from the .npy
headers before an array is allocated (benchmarks/results/2026-12-06-npz-fuzz)."""

from __future__ import annotations

import io
import pickle
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime import data_file
from fedge.edge_runtime.device_config import load_local_data
from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import load_npz_dir

ARRAYS = {"x_train": np.arange(32, dtype=np.float32).reshape(8, 4), "y_train": np.arange(8) % 2,
          "x_test": np.ones((2, 4), np.float32), "y_test": np.array([0, 1])}


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A .npy version 1.0 header for `shape`, as numpy writes one."""
    text = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _with_x_train(path: Path, x_train_npy: bytes) -> Path:
    others = {f"{k}.npy": _npy(v) for k, v in ARRAYS.items() if k != "x_train"}
    return _zip(path, {"x_train.npy": x_train_npy, **others})


def _bomb(path: Path, rows: int) -> Path:
    """x_train.npy: a true header for (rows, 4) float32 and that many zeros, deflated (a few KB
    per 64 MiB); the other arrays plain. Its CRC is left 0: what is refused is never read to the end."""
    head = _header((rows, 4))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    body = [comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)]
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)  # after a full flush each chunk deflates alike
    body += [block] * (rows * 16 // len(chunk)) + [comp.flush()]
    deflated = b"".join(body)
    _zip(path, {f"{k}.npy": _npy(v) for k, v in ARRAYS.items() if k != "x_train"})
    with zipfile.ZipFile(path, "a") as zf:  # a member whose deflated bytes are ours: write its header by hand
        info = zipfile.ZipInfo("x_train.npy")
        info.compress_type, info.CRC = zipfile.ZIP_DEFLATED, 0
        info.file_size, info.compress_size = len(head) + rows * 16, len(deflated)
        zf.fp.seek(zf.start_dir)
        info.header_offset = zf.start_dir
        zf.fp.write(info.FileHeader(zip64=False) + deflated)
        zf.start_dir = zf.fp.tell()
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
        zf._didModify = True
    return path


def test_a_zip_bomb_is_refused_from_its_header_without_inflating_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data_file, "MAX_DATA_BYTES", 8 << 20)
    path = _bomb(tmp_path / "bomb.npz", rows=(64 << 20) // 16)  # 64 MiB once inflated
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError, match=r"bomb.npz: x_train has shape \(4194304, 4\) of float32, which brings "
                                               r"the file's arrays to 64.0 MiB loaded; a data file may hold 8 MiB"):
            load_local_data(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # np.load allocated the 64 MiB the header claimed, and inflated into it


def test_the_default_cap_refuses_a_3_gib_member_in_a_small_file(tmp_path):
    path = _bomb(tmp_path / "big.npz", rows=3 * (1 << 30) // 16)
    assert path.stat().st_size < 4 << 20
    with pytest.raises(DatasetError, match=r"arrays to 3.0 GiB loaded; a data file may hold 1 GiB"):
        data_file.read_data_npz(path)


def test_a_header_that_claims_more_than_the_member_holds_is_refused_by_name(tmp_path):
    path = _with_x_train(tmp_path / "liar.npz", _header((1 << 27, 4)) + bytes(64))  # claims 2 GiB
    for load in (load_local_data, lambda p: load_npz_dir(p.parent)):
        with pytest.raises(DatasetError, match=r"liar.npz: x_train.npy's header claims shape \(134217728, 4\) "
                                               r"of float32 \(2,147,483,648 bytes\) but the file holds 64"):
            load(path)


@pytest.mark.parametrize("case", ["npy_renamed", "folder", "not_zip", "empty", "fifo", "other_keys"])
def test_files_that_are_not_data_files_are_named_on_both_sides(tmp_path, case):
    path = tmp_path / "d.npz"
    if case == "npy_renamed":  # np.load returned an ndarray: a TypeError traceback in the simulator
        path.write_bytes(_npy(ARRAYS["x_train"]))
        want = r"is a single .npy array \(numpy.save\) renamed .npz"
    elif case == "folder":
        path.mkdir()
        want = "is a folder, not a data file"
    elif case == "not_zip":  # macOS's AppleDouble ._d.npz: numpy called it pickled data
        path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(64))
        want = r"not a readable .npz file \(BadZipFile"
    elif case == "empty":
        path.write_bytes(b"")
        want = r"not a readable .npz file \(BadZipFile"
    elif case == "fifo":  # np.load's open() would wait for a writer forever
        import os
        os.mkfifo(path)
        want = "not a regular file"
    else:
        np.savez(path, X=ARRAYS["x_train"], y=ARRAYS["y_train"])
        want = r"no x_train, y_train, x_test, y_test \(it holds X, y\)"
    for load in (load_local_data, lambda p: load_npz_dir(p.parent)):
        with pytest.raises(DatasetError, match=f"d.npz: {want}"):
            load(path)


class _Trap:
    """Unpickling this writes a file: proof that a loader unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return Path.write_text, (self.path, "unpickled")


def test_an_object_array_is_refused_and_never_unpickled(tmp_path):
    sprung = tmp_path / "sprung"
    labels = np.empty(8, dtype=object)
    labels[:] = [_Trap(sprung)] * 8
    payload = _header((8,), "|O") + pickle.dumps(labels, protocol=3)
    path = _zip(tmp_path / "trap.npz", {**{f"{k}.npy": _npy(v) for k, v in ARRAYS.items()},
                                        "y_train.npy": payload})
    for load in (load_local_data, lambda p: load_npz_dir(p.parent)):
        with pytest.raises(DatasetError, match=r"trap.npz: y_train.npy holds Python objects .* never unpickles"):
            load(path)
    assert not sprung.exists()


def test_arrays_read_as_numpy_saved_them(tmp_path):
    arrays = {"x_train": np.asfortranarray(np.arange(24, dtype=">f8").reshape(4, 3, 2)), "y_train": np.arange(4) % 2,
              "x_test": np.zeros((0, 3, 2), "<f2"), "y_test": np.zeros(0, np.uint8)}
    np.savez(tmp_path / "d.npz", **arrays)
    got = data_file.read_data_npz(tmp_path / "d.npz")
    for k, v in arrays.items():  # oracle: np.load of the same file
        np.testing.assert_array_equal(got[k], v)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape


def test_extra_arrays_are_not_read(tmp_path):
    path = _zip(tmp_path / "d.npz", {**{f"{k}.npy": _npy(v) for k, v in ARRAYS.items()}, "notes.npy": b"junk"})
    data = load_local_data(path)
    np.testing.assert_array_equal(data.x_train, ARRAYS["x_train"])
    np.testing.assert_array_equal(data.y_test, ARRAYS["y_test"])


def _flag_encrypted(path: Path) -> Path:
    """Set the 'encrypted' bit of every member, in its local header and in the central directory."""
    raw = bytearray(path.read_bytes())
    for magic, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = raw.find(magic)
        while i >= 0:
            raw[i + at] |= 1
            i = raw.find(magic, i + 4)
    path.write_bytes(bytes(raw))
    return path


def _bad_deflate(path: Path) -> Path:
    """np.savez_compressed's file with x_train's deflated bytes overwritten by 0xFF (deflate
    block type 3, which does not exist): what a bad sector in a compressed file gives."""
    np.savez_compressed(path, **ARRAYS)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("x_train.npy")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    raw[start:start + info.compress_size] = b"\xff" * info.compress_size
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("case", ["bad_deflate", "encrypted", "header_tokens", "header_bool_shape"])
def test_damage_zipfile_or_the_header_parser_reports_in_its_own_words_is_named(tmp_path, case):
    """zlib.error (a bad deflate stream), RuntimeError (an encrypted member), TokenError and
    TypeError (header text numpy's parser does not expect) are none of the errors the reader
    named: the device stopped at start with a traceback (its loader before the reader caught
    them all) and so did the simulator."""
    path = tmp_path / "d.npz"
    if case == "bad_deflate":
        _bad_deflate(path)
        want = r"not a readable .npz file \(error: Error -3 while decompressing data: invalid block type"
    elif case == "encrypted":
        np.savez(path, **ARRAYS)
        _flag_encrypted(path)
        want = r"not a readable .npz file \(RuntimeError: File .*x_train.npy.* is encrypted"
    else:
        head = b"(" * 70 if case == "header_tokens" else b"{'descr': '<f4', 'fortran_order': False, 'shape': (True, 4)}"
        head += b" " * (-(len(head) + 11) % 64) + b"\n"
        _with_x_train(path, b"\x93NUMPY\x01\x00" + len(head).to_bytes(2, "little") + head + bytes(64))
        want = (r"x_train.npy is not a .npy array \(TokenError" if case == "header_tokens"
                else r"not a readable .npz file \(TypeError: an integer is required")  # from the reshape
    for load in (load_local_data, lambda p: load_npz_dir(p.parent)):
        with pytest.raises(DatasetError, match=f"d.npz: {want}"):
            load(path)


def test_npy_format_3_reads_as_np_load_reads_it(tmp_path):
    """numpy writes version 3.0 (a UTF-8 header) when asked to, and np.load reads it; the reader
    refused every such file as 'not plain numeric'."""
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in ARRAYS.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, v, version=(3, 0))
            zf.writestr(f"{k}.npy", buf.getvalue())
    got = data_file.read_data_npz(path)
    with np.load(path, allow_pickle=False) as want:  # oracle
        for k in ARRAYS:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            np.testing.assert_array_equal(got[k], want[k])


def test_a_datetime_array_is_refused_for_its_dtype_not_as_a_damaged_file(tmp_path):
    """The reader read arrays through a memoryview cast, which numpy's datetime64 refuses: a
    sound file was called unreadable ('re-save it with numpy.savez', which changes nothing)."""
    np.savez(tmp_path / "d.npz", **{**ARRAYS, "x_train": np.zeros((8, 4), "M8[s]")})
    with pytest.raises(DatasetError, match=r"d.npz: x_train has dtype datetime64\[s\]; it must be numeric"):
        load_local_data(tmp_path / "d.npz")
