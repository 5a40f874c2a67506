"""How probe.json was made (a record, not a tool): data files a user or another tool could
plausibly produce, each given to both loaders of fedge:

- sim: `fedge simulate --data DIR --rounds 1 --quiet --json ...`, the real CLI;
- device: `load_local_data(FILE)` (what `fedge device run` calls at start and at SIGHUP), in a
  child that prints a FedgeError as `fedge device run`'s CLI does and otherwise the labels it read.

Each child runs under RLIMIT_AS = 4 GiB (a zip bomb must not take the shared machine with it)
and a timeout; the row records exit status, wall time, peak RSS (from wait4), the last stderr
line, whether a traceback was printed, and for accepted files whether what was read matches an
oracle (the labels the probe meant, counted by the probe itself).

    python probe.py FEDGE_PYTHON OUT.json [case ...]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from files import (  # beside this script
    _images_vs_flat,
    _mixed_layout,
    all_devices,
    empty,
    empty_file,
    fifo,
    folder,
    hidden,
    image,
    lying_header,
    many,
    npy_renamed,
    one_example,
    other_keys,
    renamed,
    subfolder,
    symlink_outside,
    truncated,
    u8,
    zip_bomb,
)

PY = sys.argv[1]
OUT = Path(sys.argv[2])
ONLY = sys.argv[3:]
AS_LIMIT = 4 << 30  # bytes of address space per child



CASES = {
    # name: (builder, expected: "accept" or "refuse", note)
    "baseline": (lambda r: folder(r), "accept", "3 devices, float32 (n, 16), int64 labels"),
    "x_float16": (lambda r: all_devices(r, x_train=lambda a: a["x_train"].astype(np.float16),
                                        x_test=lambda a: a["x_test"].astype(np.float16)), "accept", ""),
    "x_float64": (lambda r: all_devices(r, x_train=lambda a: a["x_train"].astype(np.float64),
                                        x_test=lambda a: a["x_test"].astype(np.float64)), "accept", ""),
    "x_float64_beyond_f32": (lambda r: folder(r, x_train=lambda a: np.full(a["x_train"].shape, 1e300)), "refuse",
                             "values that overflow float32"),
    "x_uint8_0_255": (lambda r: all_devices(r, x_train=lambda a: u8(a["x_train"]), x_test=lambda a: u8(a["x_test"])),
                      "accept", "images 0..255 (load warns: far from standardized)"),
    "x_int8": (lambda r: all_devices(r, x_train=lambda a: np.round(a["x_train"] * 10).astype(np.int8),
                                     x_test=lambda a: np.round(a["x_test"] * 10).astype(np.int8)), "accept", ""),
    "x_int64": (lambda r: all_devices(r, x_train=lambda a: np.round(a["x_train"]).astype(np.int64),
                                      x_test=lambda a: np.round(a["x_test"]).astype(np.int64)), "accept", ""),
    "x_bool": (lambda r: all_devices(r, x_train=lambda a: a["x_train"] > 0, x_test=lambda a: a["x_test"] > 0),
               "accept", ""),
    "y_float_integral": (lambda r: all_devices(r, y_train=lambda a: a["y_train"] + 1.0,
                                               y_test=lambda a: a["y_test"] + 1.0), "accept",
                         "labels 1.0, 2.0, 3.0 (load reports label 0 unseen: 1-based)"),
    "y_float_fraction": (lambda r: folder(r, y_train=lambda a: a["y_train"] + 0.5), "refuse", "1.5"),
    "y_int64_near_2_63": (lambda r: folder(r, y_train=lambda a: np.where(a["y_train"] == 2, 2 ** 63 - 2, a["y_train"])),
                          "refuse", ""),
    "y_uint64_above_2_63": (lambda r: folder(r, y_train=lambda a: np.where(a["y_train"] == 2, 2 ** 63 + 5,
                                                                           a["y_train"]).astype(np.uint64)),
                            "refuse", "wraps negative if cast to int64 first"),
    "y_float_1e20": (lambda r: folder(r, y_train=lambda a: np.where(a["y_train"] == 2, 1e20, a["y_train"])), "refuse",
                     "integral float far beyond int64"),
    "y_uint8": (lambda r: all_devices(r, y_train=lambda a: a["y_train"].astype(np.uint8),
                                      y_test=lambda a: a["y_test"].astype(np.uint8)), "accept", ""),
    "y_strings": (lambda r: folder(r, y_train=lambda a: np.array(["cat", "dog", "emu"])[a["y_train"]]), "refuse", ""),
    "y_object_pickle": (lambda r: folder(r, y_train=lambda a: a["y_train"].astype(object)), "refuse",
                        "needs pickle: must never be unpickled"),
    "y_onehot": (lambda r: folder(r, y_train=lambda a: np.eye(3, dtype=np.float32)[a["y_train"]]), "refuse",
                 "2-D one-hot (n, 3)"),
    "y_column": (lambda r: all_devices(r, y_train=lambda a: a["y_train"][:, None],
                                       y_test=lambda a: a["y_test"][:, None]),
                 "accept", "(n, 1) labels"),
    "x_nhwc_all": (lambda r: all_devices(r, x_train=lambda a: image(a["x_train"], "nhwc"),
                                         x_test=lambda a: image(a["x_test"], "nhwc")), "accept",
                   "every device channels-last: one layout, an MLP on flat features"),
    "x_nhwc_one_device": (lambda r: _mixed_layout(r), "refuse", "d0 channels-last, others channels-first"),
    "x_2d_vs_flat": (lambda r: _images_vs_flat(r), "accept", "d0 (n, 4, 4), others (n, 16): one row-major order"),
    "width_differs": (lambda r: folder(r, x_train=lambda a: a["x_train"][:, :12], x_test=lambda a: a["x_test"][:, :12]),
                      "refuse", ""),
    "x_zero_columns": (lambda r: folder(r, x_train=lambda a: a["x_train"][:, :0], x_test=lambda a: a["x_test"][:, :0]),
                       "refuse", ""),
    "one_example_total": (one_example, "refuse", "one device, one training example, no test split: nothing to score"),
    "lying_header_2gib": (lying_header, "refuse", "npy header claims (2**27, 4) float32 = 2 GiB; 64 bytes follow"),
    "zip_bomb_3gib": (zip_bomb, "refuse", "x_train.npy inflates to 3 GiB of zeros from a few MB"),
    "zip_bomb_lying_size": (lambda r: zip_bomb(r, lie=True), "refuse", "the same, the zip directory claiming 1 KiB"),
    "truncated_zip": (truncated, "refuse", ""),
    "empty_file": (empty_file, "refuse", "0 bytes"),
    "npy_renamed": (npy_renamed, "refuse", "np.save output renamed .npz"),
    "extra_arrays": (lambda r: folder(r, meta=lambda a: np.arange(5), x_val=lambda a: a["x_test"]), "accept", ""),
    "missing_test": (lambda r: folder(r, x_test=lambda a: None, y_test=lambda a: None), "refuse", ""),
    "other_keys_X_y": (other_keys, "refuse", ""),
    "symlink_outside": (symlink_outside, "accept", "d0.npz -> ../<folder>-elsewhere.npz"),
    "subfolder_named_npz": (subfolder, "refuse", "a folder x.npz beside the files"),
    "name_with_spaces": (lambda r: renamed(r, "my phone 1.npz"), "accept", ""),
    "name_unicode": (lambda r: renamed(r, "téléphone-é中.npz"), "accept", ""),
    "hidden_files": (hidden, "accept", ".DS_Store and an AppleDouble ._d0.npz beside the files"),
    "empty_folder": (empty, "refuse", ""),
    "fifo_named_npz": (fifo, "refuse", "d0.npz is a FIFO (a pipe another tool writes into)"),
    "many_devices_20000": (many, "accept", "20,000 files of 6 examples"),
}



DEVICE = r"""
import json, sys
from fedge.edge_runtime.device_config import load_local_data
from fedge.edge_runtime.kernel.errors import FedgeError
try:
    d = load_local_data(sys.argv[1])
except FedgeError as exc:
    print(f"fedge: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(2)
print(json.dumps({"x_train": list(d.x_train.shape), "x_dtype": str(d.x_train.dtype),
                  "y_train": d.y_train.tolist(), "y_test": d.y_test.tolist()}))
"""


# Runs the command and reports its peak RSS: RUSAGE_CHILDREN of a wrapper that has one child.
WRAP = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
        "print('maxrss_kb=%d' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
        "sys.exit(rc if rc >= 0 else 128 - rc)")  # killed by signal N: 128 + N, as a shell says


def child(cmd: list[str], timeout: float) -> dict:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    t = time.time()
    p = subprocess.Popen([sys.executable, "-c", WRAP, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=limit, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        timed_out = True
    lines = [ln for ln in err.splitlines() if ln.strip()]
    rss = int(lines.pop()[len("maxrss_kb="):]) if lines and lines[-1].startswith("maxrss_kb=") else None
    rc = p.returncode
    return {"rc": rc, "timed_out": timed_out, "wall_s": round(time.time() - t, 2),
            "max_rss_mb": None if rss is None else round(rss / 1024), "last_stderr": lines[-1][:400] if lines else "",
            "one_line_error": bool(lines) and lines[-1].startswith("fedge: error:") and rc in (1, 2),
            "traceback": "Traceback" in err, "stdout": out}


def expected_labels(path: Path) -> list[int] | None:
    """The probe's own reading of d0's intended training labels (an oracle for accepted files)."""
    if not path.is_file():  # a FIFO: np.load would wait for a writer
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            y = np.asarray(z["y_train"])
    except Exception:  # noqa: BLE001 - not a file the oracle can read: no oracle
        return None
    return [int(v) for v in y.reshape(-1)] if y.ndim == 1 or y.shape[1:] == (1,) else None


def run_case(name: str, tmp: Path) -> dict:
    build, expected, note = CASES[name]
    root = tmp / name
    t = time.time()
    paths = build(root)
    row = {"case": name, "expected": expected, "note": note, "build_s": round(time.time() - t, 1),
           "files": len(paths), "bytes_first": paths[0].stat().st_size if paths[0].is_file() else None}
    js = tmp / f"{name}.json"
    sim = child([PY, "-m", "fedge.tools.cli", "simulate", "--data", str(root), "--rounds", "1", "--quiet",
                 "--json", str(js)], timeout=900 if name.startswith("many") else 300)
    sim.pop("stdout")
    if sim["rc"] == 0 and js.exists():
        d = json.loads(js.read_text())
        sim["data"] = {k: d["config"]["data"].get(k) for k in ("devices", "num_classes", "input_shape", "findings")}
        sim["final_global_accuracy"] = d["summary"]["final"].get("final_global_accuracy")
        sim["committed"] = sum(r["committed"] for r in d["rounds"])
    row["sim"] = sim
    if not name.startswith("many") and name not in ("empty_folder",):
        dev = child([PY, "-c", DEVICE, str(paths[0])], timeout=120)
        out = dev.pop("stdout")
        if dev["rc"] == 0:
            got = json.loads(out)
            oracle = expected_labels(paths[0])
            dev["x_train"], dev["x_dtype"] = got["x_train"], got["x_dtype"]
            dev["labels_match_oracle"] = None if oracle is None else got["y_train"] == oracle
        row["device"] = dev
    return row


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="npz-fuzz-") as tmp:
        for name in ONLY or CASES:
            row = run_case(name, Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    OUT.write_text(json.dumps({"python": PY, "rlimit_as_bytes": AS_LIMIT, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
