"""read_data_npz against np.load(allow_pickle=False) on legal files: savez, savez_compressed and
write_array versions 1.0/2.0/3.0, every byte order and numeric dtype, 0-d, empty, Fortran 2-4-D,
non-contiguous, 32 axes. Prints one line per file that does not read alike (SAME lines filtered by
the caller: `python probe_reader.py | grep -v SAME$`)."""

import io
import os
import tempfile
import traceback
import zipfile

import numpy as np

from fedge.edge_runtime.data_file import read_data_npz
from fedge.edge_runtime.kernel.errors import DatasetError


def save(path, arrays, compressed=False, version=None):
    if version is None:
        (np.savez_compressed if compressed else np.savez)(path, **arrays)
        return
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        for k, a in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, version=version, allow_pickle=False)
            zf.writestr(k + ".npy", buf.getvalue())


def base(x=None, y=None, xt=None, yt=None):
    rng = np.random.default_rng(0)
    return dict(
        x_train=rng.random((5, 4)) if x is None else x,
        y_train=np.arange(5) % 2 if y is None else y,
        x_test=rng.random((3, 4)) if xt is None else xt,
        y_test=np.arange(3) % 2 if yt is None else yt,
    )


cases = {}
for bo in ["<", ">", "=", "|"]:
    for t in ["f4", "f8", "i4", "u1", "i1", "b1", "f2", "i8", "u8"]:
        try:
            dt = np.dtype(bo + t)
        except TypeError:
            continue
        cases[f"dtype {bo}{t}"] = base(x=(np.arange(20) % 3).astype(dt).reshape(5, 4))
cases["0-d x"] = base(x=np.array(3.0))
cases["empty x_test (0,4)"] = base(xt=np.zeros((0, 4)), yt=np.zeros(0, int))
cases["empty np.array([])"] = base(xt=np.array([]), yt=np.array([]))
cases["fortran 2d"] = base(x=np.asfortranarray(np.arange(20.0).reshape(5, 4)))
cases["fortran 3d"] = base(x=np.asfortranarray(np.arange(40.0).reshape(5, 2, 4)))
cases["fortran 4d"] = base(x=np.asfortranarray(np.arange(120.0).reshape(5, 2, 3, 4)))
cases["non-contig slice"] = base(x=np.arange(40.0).reshape(5, 8)[:, ::2])
cases["transposed 3d"] = base(x=np.arange(40.0).reshape(4, 2, 5).transpose(2, 1, 0))
cases["big header (many dims)"] = base(x=np.zeros((5,) + (1,) * 30 + (4,)))
cases["y (n,1)"] = base(y=(np.arange(5) % 2).reshape(5, 1))
cases["big-endian y"] = base(y=(np.arange(5) % 2).astype(">i8"))
cases["structured"] = base(x=np.zeros(5, dtype=[("a", "<f4"), ("b", "<f4")]))
cases["unicode y"] = base(y=np.array(list("abcab")))
cases["datetime"] = base(x=np.zeros((5, 4), "M8[s]"))
cases["complex"] = base(x=np.zeros((5, 4), "c8"))
cases["void"] = base(x=np.zeros((5, 4), "V4"))
cases["extra array"] = dict(base(), extra=np.arange(3), **{})
d = tempfile.mkdtemp()


def compare(name, arrays, **kw):
    p = os.path.join(
        d, name.replace(" ", "_").replace("/", "") + str(kw.get("version")) + str(kw.get("compressed")) + ".npz"
    )
    try:
        save(p, arrays, **kw)
    except Exception as e:
        print(f"{name} {kw}: cannot save: {e}")
        return
    try:
        with np.load(p, allow_pickle=False) as z:
            ref = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        referr = None
    except Exception as e:
        ref, referr = None, f"{type(e).__name__}: {e}"
    try:
        got = read_data_npz(p)
        goterr = None
    except DatasetError as e:
        got, goterr = None, f"DatasetError: {e}"
    except Exception:
        got, goterr = None, "UNNAMED " + traceback.format_exc()
    if ref is not None and got is not None:
        bad = [
            k
            for k in ref
            if ref[k].dtype != got[k].dtype
            or ref[k].shape != got[k].shape
            or not np.array_equal(ref[k], got[k], equal_nan=False)
            or ref[k].tobytes("A") != got[k].tobytes("A")
        ]
        flags = [k for k in ref if ref[k].flags.f_contiguous != got[k].flags.f_contiguous]
        verdict = "SAME" if not bad else f"DIFFER {bad} " + str([(ref[k].dtype, got[k].dtype) for k in bad])
        if flags:
            verdict += f" (contiguity differs {flags})"
    elif ref is None and got is None:
        verdict = f"both refuse: np.load {referr[:80]} | ours {goterr[:160]}"
    elif ref is None:
        verdict = f"np.load refuses ({referr[:100]}) but ours LOADS"
    else:
        verdict = f"np.load LOADS but ours refuses: {goterr[:300]}"
    print(f"{name} {kw}: {verdict}")


for name, arrays in cases.items():
    for comp in (False, True):
        for ver in (None, (1, 0), (2, 0), (3, 0)):
            compare(name, arrays, compressed=comp, version=ver)
