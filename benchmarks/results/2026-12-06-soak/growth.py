"""Growth per 100 rounds of each sampled quantity in a soak.py samples file: a least-squares
slope against the committed model version, over the samples after the first --skip fraction
of the run (warm-up), with the first and last values beside it.

    python3 benchmarks/results/2026-12-06-soak/growth.py samples.json
"""

from __future__ import annotations

import argparse
import json


def series(samples: list[dict]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}

    def add(key: str, v: float, x: float) -> None:
        out.setdefault(key, []).append((x, float(v)))

    for s in samples:
        x = s["metrics"].get("model_version")
        if x is None:
            continue
        for proc in ("coordinator", "device", "mosquitto"):
            for k, v in s[proc].items():
                if k != "cpu_s":
                    add(f"{proc}.{k}", v, x)
        for k in ("db_bytes", "db_wal_bytes"):
            add(k, s[k], x)
        for group in ("payloads", "state_all_devices", "mosquitto_data"):
            for k, v in s[group].items():
                add(f"{group}.{k}", v, x)
        for k, v in s["device_state"].items():
            add(f"dev-000/{k}", v, x)
        for k, v in s["logs"].items():
            add(f"logs/{k}", v, x)
    return out


def slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("--skip", type=float, default=0.5, help="fraction of the run left out as warm-up")
    args = ap.parse_args()
    doc = json.load(open(args.samples))
    samples = doc["samples"]
    rounds = max(s["metrics"].get("model_version", 0) for s in samples)
    last = samples[-1]
    cpu = last["fleet_cpu_s"] / last["t_s"] if last["t_s"] else 0
    print(f"{len(samples)} samples over {last['t_s']:.0f} s, model version {rounds:.0f}, "
          f"fleet CPU {cpu:.2f} cores on average; churn: {len(doc['events'])} kill -9s")
    print(f"{'quantity':60} {'first':>12} {'last':>12} {'per 100 rounds':>15}")
    for key, pts in sorted(series(samples).items()):
        tail = [p for p in pts if p[0] >= args.skip * rounds]
        if len(tail) < 3:
            continue
        print(f"{key:60} {pts[0][1]:12.0f} {pts[-1][1]:12.0f} {100 * slope(tail):15.1f}")


if __name__ == "__main__":
    main()
