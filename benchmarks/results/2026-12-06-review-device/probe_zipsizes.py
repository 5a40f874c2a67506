"""Zip members whose local header and central directory disagree about sizes, a duplicated
member name, zip64 members: read_data_npz against np.load."""

import io
import os
import struct
import tempfile
import warnings
import zipfile

import numpy as np

from fedge.edge_runtime.data_file import read_data_npz
from fedge.edge_runtime.kernel.errors import DatasetError

d = tempfile.mkdtemp()
A = dict(
    x_train=np.arange(40, dtype=np.float32).reshape(10, 4),
    y_train=np.arange(10) % 2,
    x_test=np.ones((2, 4), np.float32),
    y_test=np.array([0, 1]),
)


def run(name, p):
    try:
        got = read_data_npz(p)
        with np.load(p) as z:
            ref = {k: z[k] for k in A}
        print(
            name,
            "LOADED",
            "same as np.load" if all(np.array_equal(got[k], ref[k]) for k in A) else "DIFFERS from np.load",
        )
    except DatasetError as e:
        print(name, "named:", str(e)[len(p) :][:160])
    except Exception as e:
        print(name, "UNNAMED", type(e).__name__, e)


for comp in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    p = os.path.join(d, f"a{comp}.npz")
    with zipfile.ZipFile(p, "w", comp) as zf:
        for k, v in A.items():
            b = io.BytesIO()
            np.save(b, v)
            zf.writestr(k + ".npy", b.getvalue())
    raw = bytearray(open(p, "rb").read())
    for name, magic, at, size in (
        ("local size lies", b"PK\x03\x04", 22, 2**31 - 1),  # CD true
        ("CD size lies", b"PK\x01\x02", 24, 2**31 - 1),  # the .npy header true
        ("CD size too small", b"PK\x01\x02", 24, 100),
    ):
        r = bytearray(raw)
        i = r.find(magic)  # the first member's header: x_train.npy
        r[i + at : i + at + 4] = struct.pack("<I", size)
        q = f"{p}.{name.replace(' ', '_')}"
        open(q, "wb").write(r)
        run(f"comp={comp} {name}", q)
# duplicate member name
p = os.path.join(d, "dup.npz")

warnings.simplefilter("ignore")
with zipfile.ZipFile(p, "w") as zf:
    for k, v in A.items():
        b = io.BytesIO()
        np.save(b, v)
        zf.writestr(k + ".npy", b.getvalue())
    b = io.BytesIO()
    np.save(b, np.zeros((10, 4), np.float32))
    zf.writestr("x_train.npy", b.getvalue())
run("duplicate x_train.npy", p)
# zip64 member
p = os.path.join(d, "z64.npz")
with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
    for k, v in A.items():
        with zf.open(k + ".npy", "w", force_zip64=True) as fh:
            np.save(fh, v)
run("zip64 members", p)
