"""What the SQLite state database grows by per round, with keep_rounds = 0 (keep all) and N.

Drives coordinator.store.RoundStore directly, the calls the coordinator makes in each round of
the soak (benchmarks/results/2026-12-06-soak/: 4 tasks a round, 3 of them answered, every model
evaluated by 3 devices): open_round (4 selected of 6 devices, task ids of 32 hex characters),
add_update for 3 (update ids and sha256 digests as devices and admission make them), a device
row upserted for each, commit_round with a RoundRecord and a model of the soak's shape (64
inputs, an 8-unit LoRA layer, a 10-class head), then add_evaluation with an EvalRecord. The
records hold the values of a real round (seeded draws), so their JSON has the soak's length.
Sizes after each `--every` rounds: the file (after a WAL checkpoint), the pages in use (page
count less the free list: what a VACUUM would leave), and at the end the bytes per table
(SQLite's dbstat) and the size after VACUUM.

    .venv-test/bin/python benchmarks/results/2026-12-06-retention/retention.py --rounds 300 \\
        --keep 0 100 --switch 0 100 --json benchmarks/results/2026-12-06-retention/retention-300.json
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedge.coordinator.evaluation import EvalRecord
from fedge.coordinator.records import RoundRecord
from fedge.coordinator.store import RoundStore, StoredDevice, StoredRound, StoredUpdate
from fedge.coordinator.strategies import ServerState

DEVICES = [f"dev-{i:03d}" for i in range(6)]


def _state(version: int, rng) -> ServerState:
    shapes = {"fc.lora_a": (64, 8), "fc.lora_b": (8, 64), "head.weight": (64, 10), "head.bias": (10,)}
    return ServerState(version, {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})


def _round(store: RoundStore, r: int, rng) -> None:
    wall = 1.7e9 + 0.68 * r
    picked = [DEVICES[i] for i in sorted(rng.choice(len(DEVICES), 4, replace=False))]
    store.open_round(StoredRound(r, r - 1, tuple(picked), {d: rng.bytes(16).hex() for d in picked}, 4, 2,
                                 wall, wall + 8.0))
    for seq, device in enumerate(picked[:3]):
        store.add_update(r, StoredUpdate(seq, device, rng.bytes(16).hex(), rng.bytes(32).hex(), 300,
                                         rng.bytes(2600)))
        store.save_device(StoredDevice(device, wall, True, "", 300))
    record = RoundRecord(r, True, "target", 4, 3, {}, int(rng.integers(7000, 8000)), int(rng.integers(7000, 8000)),
                         int(rng.integers(9000, 11000)), float(rng.uniform(0.2, 0.6)), float(rng.uniform(0.1, 2.0)))
    store.commit_round(r, _state(r, rng), asdict(record), wall + 0.5)
    evaluation = asdict(EvalRecord(r, r, 3, 3, {}, 900, float(rng.uniform(0.1, 2)), float(rng.uniform(0.5, 1)), 900,
                                   float(rng.uniform(0.1, 2)), float(rng.uniform(0.5, 1)), 1500, 8000, True))
    del evaluation["per_device"]  # as coordinator/evaluation.py stores it
    store.add_evaluation(r, evaluation)


def _sizes(path: Path) -> dict:
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        rows = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("rounds", "evaluations", "updates", "models", "privacy_ledger")}
    finally:
        db.close()
    return {"file_bytes": path.stat().st_size, "used_bytes": (pages - free) * page, "free_pages": free, "rows": rows}


def run(rounds: int, keep: int, every: int, folder: Path, switch_to: int | None = None) -> dict:
    """switch_to: after `rounds` rounds, reopen the file with keep_rounds = switch_to and run 10 more
    (an existing state file whose operator turns pruning on)."""
    path = folder / f"state-keep{keep}-{switch_to}.db"
    rng = np.random.default_rng(0)
    store = RoundStore(path, durable=False, keep_rounds=keep)
    store.bind("soak-model", "fedavg")
    store.save_initial_state(_state(0, rng))
    samples = []
    for r in range(1, rounds + 1):
        _round(store, r, rng)
        if r % every == 0:
            samples.append({"round": r, **_sizes(path)})
    store.close()
    if switch_to is not None:
        store = RoundStore(path, durable=False, keep_rounds=switch_to)
        for r in range(rounds + 1, rounds + 11):
            _round(store, r, rng)
        store.close()
        samples.append({"round": rounds + 10, "keep_rounds": switch_to, **_sizes(path)})
    db = sqlite3.connect(path)
    try:
        tables = dict(db.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY name").fetchall())
        db.execute("VACUUM")
    finally:
        db.close()
    half = [s for s in samples if rounds // 2 < s["round"] <= rounds]  # before a switch
    growth = ((half[-1]["used_bytes"] - half[0]["used_bytes"]) / (half[-1]["round"] - half[0]["round"]) * 100
              if len(half) > 1 else None)
    return {"keep_rounds": keep, "then_keep_rounds": switch_to, "rounds": rounds, "samples": samples,
            "table_bytes": tables,
            "vacuumed_bytes": path.stat().st_size, "used_bytes_per_100_rounds_second_half": growth}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--keep", type=int, nargs="+", default=[0, 100])
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--switch", type=int, nargs=2, metavar=("KEEP", "THEN"),
                    help="also: --rounds rounds with keep_rounds KEEP, then 10 with THEN on the same file")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = [run(args.rounds, keep, args.every, Path(folder)) for keep in args.keep]
        if args.switch:
            runs.append(run(args.rounds, args.switch[0], args.every, Path(folder), args.switch[1]))
    for r in runs:
        last = r["samples"][-1]
        then = "" if r["then_keep_rounds"] is None else f" then {r['then_keep_rounds']} for 10"
        print(f"keep_rounds={r['keep_rounds']:>4}{then}: {r['rounds']} rounds, file {last['file_bytes']:,} B, "
              f"in use {last['used_bytes']:,} B, after VACUUM {r['vacuumed_bytes']:,} B, second half "
              f"{r['used_bytes_per_100_rounds_second_half']:,.0f} B per 100 rounds; rows {last['rows']}")
    if args.json:
        args.json.write_text(json.dumps({"runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
