"""`fedge audit leakage`: what the coordinator learns about one device's data from a plain
update, and from a secure-aggregation sum of n devices' updates.

  plain   one device, one example, one SGD step: the first layer's update inverted
          analytically (inversion.py); then several steps and batch sizes. The attacker picks
          the row whose bias moved most (it knows nothing else); errors are against the
          device's closest example.
  secagg  n devices' updates summed (all the coordinator sees). A competent attacker tries
          every row of the layer; the audit keeps, per device, the best row against any of
          that device's examples (the attacker's best case, not tuned either way). A device
          counts as recovered when that row's relative error is under 0.2 (the example is
          recognizable). The guess is the mean image of the data (what an attacker knows
          without any update); guess_psnr is its median PSNR against the devices' best-matched
          examples, so a best-row PSNR near it means the sum told the attacker nothing.

The sum is taken exactly (no quantization, no masks: those hide nothing once unmasked), so
the secagg numbers bound what any coordinator learns from the protocol's output.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.beside_json import check_parent_folder, png_metadata
from fedge.tools.cli_args import MAX_COUNT, out_file_arg

from .inversion import init_mlp, invert_rows, local_update, match, psnr

RECOVERED_BELOW = 0.2  # relative error of the best row
LR = 0.1


def _device_data(x, y, rng, count: int, batch: int):
    picks = rng.choice(len(x), size=count * batch, replace=False).reshape(count, batch)
    return [(x[i], y[i]) for i in picks]


def plain_case(x, y, steps: int, batch: int, rng, runtime=None) -> dict:
    """One device's update of `batch` examples after `steps` steps, inverted. runtime: a
    runtime_update.RuntimeUpdates (the device's own ORT backend on mlp-784-lora, full mode);
    None: the numpy copy of the same MLP in float64."""
    (xb, yb), = _device_data(x, y, rng, 1, batch)
    if runtime is None:
        u = local_update(init_mlp(rng), xb.astype(np.float64), yb, steps, LR)
        dw, db = u["w1"], u["b1"]
    else:
        dw, db = runtime.first_layer_update(xb, yb, steps, LR)
    rows, cands = invert_rows(dw, db)
    guess = cands[np.argmax(np.abs(db[rows]))]
    best = max((match(guess, xe) for xe in xb), key=lambda m: m.cosine)
    return {"local_steps": steps, "batch_size": batch, "relative_error": best.relative_error, "cosine": best.cosine,
            "psnr": best.psnr}


def secagg_case(x, y, devices: int, steps: int, batch: int, rng, mean_image, runtime=None) -> tuple[dict, list]:
    """The attack on the sum of `devices` updates (what SecAgg reveals), each device `batch`
    examples and `steps` steps from the same global model. runtime: as plain_case."""
    p = init_mlp(rng)  # drawn either way, so the data draws below are the same with either backend
    data = _device_data(x, y, rng, devices, batch)
    total_w, total_b = 0.0, 0.0
    for xb, yb in data:
        if runtime is None:
            u = local_update(p, xb.astype(np.float64), yb, steps, LR)
            dw, db = u["w1"], u["b1"]
        else:
            dw, db = runtime.first_layer_update(xb, yb, steps, LR)
        total_w, total_b = total_w + dw, total_b + db
    _, cands = invert_rows(total_w, total_b)
    cands = np.clip(cands, 0.0, 1.0)
    best_psnr, guess_psnr, recovered, pictures = [], [], 0, []
    for xb, _ in data:
        # relative error of every candidate against every example of the device: the attacker's best row
        err = np.linalg.norm(cands[:, None, :] - xb[None, :, :], axis=2) / np.linalg.norm(xb, axis=1)[None, :]
        r, e = np.unravel_index(np.argmin(err), err.shape) if err.size else (0, 0)
        best = cands[r] if err.size else mean_image
        best_psnr.append(psnr(best, xb[e]))
        guess_psnr.append(psnr(mean_image, xb[e]))
        recovered += bool(err.size) and float(err[r, e]) < RECOVERED_BELOW
        pictures.append((xb[e], best))
    return {"devices": devices, "local_steps": steps, "batch_size": batch, "recovered_fraction": recovered / devices,
            "best_psnr_median": float(np.median(best_psnr)), "guess_psnr": float(np.median(guess_psnr))}, pictures


def run(devices=(1, 2, 5, 10, 20, 50), steps=(1, 5), batches=(1, 8), seed: int = 0, png: str | None = None,
        runtime: bool = True) -> dict:
    """runtime: the updates (plain cases and every device's in the SecAgg sums) from the
    device's ORT training backend (runtime_update.py); where onnxruntime-training is missing
    they fall back to the numpy copy, and the JSON says so (plain.backend, secagg_backend)."""
    from fedge.tools.datasets import load_mnist5k

    x, y = load_mnist5k()
    mean_image = x.mean(axis=0)
    rng = np.random.default_rng(seed)
    cases = [(s, b) for s in (1, *steps[1:]) for b in (1, *batches[1:])]
    backend, updates = "numpy float64 copy of the MLP (784-200-200-10)", None
    if runtime:
        from fedge.edge_runtime.kernel.errors import BackendUnavailable

        try:
            from .runtime_update import RuntimeUpdates

            updates = RuntimeUpdates()
            backend = updates.label
        except (BackendUnavailable, ImportError) as exc:
            backend += f" (the ORT training backend is unavailable: {exc})"
    # the numpy cases draw from the shared stream first, as before the runtime cases existed, so
    # the SecAgg cases below see the same draws (their results stay comparable across versions)
    numpy_plain = [plain_case(x, y, s, b, rng) for s, b in cases]
    secagg, shown = [], {}
    try:
        plain = [plain_case(x, y, s, b, np.random.default_rng([seed, s, b]), updates) for s, b in cases] \
            if updates is not None else numpy_plain
        for n in devices:
            for s in steps:
                for b in batches:
                    row, pictures = secagg_case(x, y, n, s, b, rng, mean_image, updates)
                    secagg.append(row)
                    shown[(n, s, b)] = pictures[:4]
    finally:
        if updates is not None:
            updates.close()
    doc = {"plain": plain[0] | {"cases": plain, "backend": backend},
           "plain_numpy": numpy_plain[0] | {"cases": numpy_plain}, "secagg": secagg, "secagg_backend": backend,
           "recovered_below_relative_error": RECOVERED_BELOW,
           "model": "784-200-200-10 ReLU MLP, first layer trained in full", "lr": LR, "seed": seed}
    if png:
        _draw(png, shown)
    return doc


def _draw(path: str, shown: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(shown)
    cols = max(len(v) for v in shown.values()) * 2
    fig, axes = plt.subplots(len(keys), cols, figsize=(cols * 1.1, len(keys) * 1.2), squeeze=False)
    for r, key in enumerate(keys):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            pair = shown[key][c // 2] if c // 2 < len(shown[key]) else None
            if pair is not None:
                ax.imshow(pair[c % 2].reshape(28, 28), cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(f"n={key[0]} s={key[1]} B={key[2]}", fontsize=6, loc="left")
    fig.suptitle("original | best row from the sum, per device", fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, metadata=png_metadata("audit leakage"))  # a rerun into --png may replace it
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge audit leakage", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, required=True)
    p.add_argument("--png", default=None, type=out_file_arg, help="originals and reconstructions side by side")
    p.add_argument("--devices", default="1,2,5,10,20,50")
    p.add_argument("--steps", default="1,5")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--numpy-updates", "--numpy-plain", dest="numpy_updates", action="store_true",
                   help="every update (plain and SecAgg cases) from the numpy copy, not the device's ORT "
                        "training backend")
    a = p.parse_args(argv)
    # each once ended in a traceback (abc, "", -1 seed, a .txt plot) or ran a meaningless case (0 or -1 steps)
    lists = {flag: _counts(p, flag, getattr(a, flag)) for flag in ("devices", "steps", "batches")}
    if a.seed < 0:
        p.error(f"--seed {a.seed}: must be >= 0")
    if a.png is not None and Path(a.png).suffix.lower() != ".png":
        p.error(f"--png {a.png}: name a .png file")
    check_parent_folder(a.json_path, "--json")  # a file in the way: told now, not after the cases
    if a.png is not None:
        check_parent_folder(a.png, "--png")
    doc = run(lists["devices"], lists["steps"], lists["batches"], a.seed, a.png, runtime=not a.numpy_updates)
    # folders made when missing (savefig and `open` raised FileNotFoundError there, after every case)
    atomic_write_bytes(Path(a.json_path), json.dumps(doc, indent=2).encode())
    print(f"plain ({doc['plain']['backend']}): relative error {doc['plain']['relative_error']:.3g}, "
          f"PSNR {doc['plain']['psnr']:.1f} dB")
    for r in doc["secagg"]:
        print(f"secagg n={r['devices']} steps={r['local_steps']} batch={r['batch_size']}: recovered "
              f"{r['recovered_fraction']:.2f}, best PSNR {r['best_psnr_median']:.1f} dB (guess {r['guess_psnr']:.1f})")
    return 0


def _counts(p: argparse.ArgumentParser, flag: str, text: str) -> tuple[int, ...]:
    """A comma list of counts >= 1, or argparse's usage error naming the flag."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        p.error(f"--{flag} {text!r}: a comma list of whole numbers, e.g. 1,5")
    if min(values) < 1 or max(values) > MAX_COUNT:  # 10**30 was an OverflowError traceback
        p.error(f"--{flag} {text}: each must be >= 1 and at most {MAX_COUNT:,}")
    return values
