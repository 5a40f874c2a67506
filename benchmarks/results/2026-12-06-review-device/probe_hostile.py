"""Hostile .npz files (odd .npy headers, an encrypted flag, 40 seeded 3-bit flips of a compressed
file, bz2 and LZMA members, a member without .npy): each must load or be a DatasetError."""

import io
import os
import random
import struct
import tempfile
import zipfile

import numpy as np

from fedge.edge_runtime.data_file import read_data_npz
from fedge.edge_runtime.kernel.errors import DatasetError

d = tempfile.mkdtemp()


def good_arrays():
    return dict(
        x_train=np.arange(20.0).reshape(5, 4), y_train=np.arange(5) % 2, x_test=np.ones((3, 4)), y_test=np.arange(3) % 2
    )


def npy(a, header=None):
    b = io.BytesIO()
    np.lib.format.write_array(b, a, version=(1, 0))
    raw = b.getvalue()
    if header is None:
        return raw
    h = header.encode("latin1")
    h = h + b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + raw[raw.index(b"\n") + 1 :]


def write(name, members, comp=zipfile.ZIP_STORED):
    p = os.path.join(d, name + ".npz")
    with zipfile.ZipFile(p, "w", comp) as zf:
        for k, v in members.items():
            zf.writestr(k, v)
    return p


def run(name, p):
    try:
        read_data_npz(p)
        print(f"{name}: LOADED")
    except DatasetError as e:
        print(f"{name}: named: {str(e)[len(p) :][:150]}")
    except BaseException as e:
        print(f"{name}: UNNAMED {type(e).__name__}: {e}")


g = good_arrays()
base = {k + ".npy": npy(v) for k, v in g.items()}
# headers
for i, h in enumerate(
    [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 2**70), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (0, 1180591620717411303424), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (-5, -4), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (0, -4), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (0,) + (1,)*70, }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (0," + "1," * 71 + "), }",
        "{'descr': [('a', '<f8', (1<<40,))], 'fortran_order': False, 'shape': (5,), }",
        "{'descr': [('a', '<f8', (1099511627776,))], 'fortran_order': False, 'shape': (0,), }",
        "{'descr': '<U0', 'fortran_order': False, 'shape': (5,), }",
        "{'descr': 'V0', 'fortran_order': False, 'shape': (5,4), }",
        "{'descr': '<f8', 'fortran_order': 1, 'shape': (5,4), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (5,4), 'extra': 1}",
        "{'descr': 5, 'fortran_order': False, 'shape': (5,4), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': [5,4], }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (True,4), }",
        "{'descr': '<M8[s]', 'fortran_order': False, 'shape': (5,4), }",
        "{'descr': '<m8[s]', 'fortran_order': False, 'shape': (5,4), }",
        "{'descr': '<c16', 'fortran_order': False, 'shape': (5,4), }",
        "{'descr': '<f8', 'fortran_order': False, 'shape': (" + "(" * 200 + "5" + ")" * 200 + ",4), }",
        "(" * 3000,
    ]
):
    run(f"header {i} {h[:70]}", write(f"h{i}", {**base, "x_train.npy": npy(g["x_train"], h)}))
# encrypted flag
p = write("enc", base)
raw = bytearray(open(p, "rb").read())
# set bit0 in all local headers and central dir
for magic, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
    j = raw.find(magic)
    while j >= 0:
        raw[j + at] |= 1
        j = raw.find(magic, j + 4)
open(p, "wb").write(raw)
run("encrypted flag", p)
# corrupt deflate
p = write("deflbad", base, zipfile.ZIP_DEFLATED)
raw = bytearray(open(p, "rb").read())
for seed in range(40):
    r = bytearray(raw)
    rng = random.Random(seed)
    for _ in range(3):
        k = rng.randrange(40, len(r) - 200)
        r[k] ^= 1 << rng.randrange(8)
    q = os.path.join(d, f"fl{seed}.npz")
    open(q, "wb").write(r)
    try:
        read_data_npz(q)
        res = "LOADED"
    except DatasetError:
        res = "named"
    except BaseException as e:
        res = f"UNNAMED {type(e).__name__}: {e}"
    if res != "named":
        print(f"flip {seed}: {res}")
for comp, nm in ((zipfile.ZIP_BZIP2, "bz2"), (zipfile.ZIP_LZMA, "lzma")):
    run(nm, write(nm, base, comp))
# member named without .npy
run(
    "x_train no suffix raw",
    write("nosuf", {**{k: v for k, v in base.items() if k != "x_train.npy"}, "x_train": b"hello"}),
)
run(
    "dir entry x_train/",
    write("dirent", {**{k: v for k, v in base.items() if k != "x_train.npy"}, "x_train.npy/": b""}),
)
