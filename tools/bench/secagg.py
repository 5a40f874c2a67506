"""`fedge bench secagg`: secure aggregation's cost per device and on the coordinator, in JSON.

For each cohort size n, dropout fraction and input width b, on vectors of d coordinates, with
k and t as graph.choose_parameters documents (sigma = 40, eta = 20, 30% dropouts):

  bytes_per_device        upload of one device per round, all four stages: the encoded frames
                          of its KeyAdvertisement, EncryptedShares (k sealed boxes: 48 bytes with
                          plain shares on a complete graph, 32 with packed ones on a sparse graph),
                          MaskedInput (d values packed to m = b + ceil(log2 n) bits) and
                          UnmaskResponse (one share per neighbour, 16 or 8 bytes), each as
                          `encode_message` frames it
  floor_bytes_per_device  the packed-field floor, ceil(d m / 8)
  plain_bytes_per_device  the same update without SecAgg, b bits packed: ceil(d b / 8)
  flower_bytes_per_device d coordinates in a fixed 32-bit field, for comparison
  device_cpu_seconds      one device's CPU time for its round (process time): encode on the
                          shared grid, keys, shares for k neighbours, open k boxes, mask with k
                          pair masks, reveal, pack
  unmask_seconds          the coordinator's wall time (all cores, as it runs: worker processes)
                          to reconstruct the secrets from t shares each (self-mask seeds of the
                          survivors, mask keys of the dropped) and remove every mask from the
                          survivors' masked sum: the least of --repeats timings of the same
                          unmask (the machine may be shared), with their median and all of them
                          (unmask_seconds_median, unmask_seconds_all), and the CPU seconds it
                          took in all processes (unmask_cpu_seconds, least of the repeats);
                          load_average_1min: the machine's before and after the timings
  exact                   the unmasked sum equals the plain modular sum bit for bit

How the coordinator's input is built: the survivors' masked sum is their plain sum plus their
self-masks plus, for each dropped device, the pair masks its surviving neighbours added,
computed from the *survivors'* side (their private key, the dropped device's public key), so
the coordinator's removal (from the dropped device's reconstructed private key) is checked
against an independent computation. Pair masks between two survivors cancel and are left out
(that they cancel is tested with the whole protocol, tests/secagg/test_protocol.py). The
shares are real Shamir shares of the real secrets, at t of each owner's surviving neighbours.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.edge_runtime.kernel.secagg import quantize, shamir
from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.graph import choose_parameters, neighbour_graph
from fedge.edge_runtime.kernel.secagg.keys import encrypt_share
from fedge.edge_runtime.kernel.secagg.masking import mask_input, pair_mask, sum_mod
from fedge.edge_runtime.kernel.secagg.messages import (
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    UnmaskResponse,
)
from fedge.edge_runtime.kernel.secagg.packing import pack
from fedge.edge_runtime.kernel.secagg.prg import words
from fedge.edge_runtime.kernel.secagg.recovery import unmask_answers
from fedge.tools.beside_json import check_parent_folder
from fedge.tools.cli_args import MAX_COUNT, MAX_SEED, int_in, out_file_arg

MODEL = "ab" * 32
ROUND = 1


def _device_round(me: str, graph, sessions, t: int, packing: int, d: int, bits: int, m: int,
                  rng) -> tuple[float, int]:
    """(CPU seconds, upload bytes) of one device's round with all its neighbours present."""
    neighbours = graph[me]
    cohort = tuple(sorted(graph))
    adv = {p: sessions[p].advertised for p in neighbours}
    # what its neighbours send it, prepared outside the timer (their work, not its)
    boxes = {}
    for p in neighbours:
        peer = sessions[p]
        peer = dataclasses.replace(peer, peers={me: sessions[me].advertised})
        plain = os.urandom(sess.share_plaintext_bytes(packing))
        boxes[p] = encrypt_share(sess._cipher_key(peer, me), ROUND, p, me, plain)
    delta = rng.normal(scale=1e-3, size=d)
    start = time.process_time()
    values = quantize.encode(delta, 7, 4e-3, bits, rng)
    s = sessions[me]
    s, sealed = sess.shares_for_neighbours(s, cohort, neighbours, t, adv)
    s = sess.receive_shares(s, boxes)
    y = mask_input(values, me, s.self_seed, s.mask.private, sess.masking_peers(s), ROUND, m)
    packed = pack(y, m)
    s, revealed = sess.reveal(s, cohort, (), MODEL)
    cpu = time.process_time() - start
    assert s.packing == packing, (s.packing, packing)
    frames = [
        KeyAdvertisement(me, ROUND, "t", s.cipher.public, s.mask.public, MODEL),
        EncryptedShares(me, ROUND, "t", b"".join(sealed[p] for p in sorted(sealed))),
        MaskedInput(me, ROUND, "t", d, m, packed, 100),
        UnmaskResponse(me, ROUND, "t", b"".join(revealed[o][1].to_bytes(shamir.value_bytes(packing), "big")
                                                for o in sorted(revealed))),
    ]
    return cpu, sum(len(encode_message(f)) for f in frames)


def _coordinator_unmask(ids, graph, sessions, t: int, packing: int, d: int, bits: int, m: int, dropout: float,
                        rng, repeats: int = 1) -> tuple[list[float], list[float], bool]:
    n = len(ids)
    dropped = tuple(sorted(rng.choice(ids, size=int(round(dropout * n)), replace=False).tolist()))
    alive = tuple(x for x in ids if x not in set(dropped))
    alive_set = set(alive)
    values = {a: rng.integers(0, 2**bits - 1, size=d, dtype=np.uint32) for a in alive}
    masked = sum_mod(values.values(), m, d)
    for a in alive:
        masked += words(sessions[a].self_seed, d)
    masked_with: dict[str, dict[str, bytes]] = {}
    for g in dropped:
        masked_with[g] = {}
        for s in graph[g]:
            if s in alive_set:
                mask = pair_mask(sessions[s].mask.private, sessions[g].mask.public, ROUND, s, g, d)
                masked = masked + mask if s < g else masked - mask
                masked_with[g][s] = sessions[s].mask.public
    masked &= np.uint32((1 << m) - 1)
    cohort = tuple(sorted(ids))
    answers: dict[str, dict[str, tuple[str, int]]] = {}
    for owner in ids:
        own = sessions[owner]
        kind, secret = ("mask", own.mask_seed) if owner in dropped else ("self", own.self_seed)
        holders = [h for h in graph[owner] if h in alive_set][:t]
        points = [sess.point_of(h, cohort) for h in holders]
        for h, share in zip(holders, shamir.share_seed(secret, t, points, packing)):
            answers.setdefault(h, {})[owner] = (kind, share)
    plain = sum_mod(values.values(), m, d)
    walls, cpus, exact = [], [], True
    for _ in range(repeats):  # the machine is shared: the same unmask, timed `repeats` times
        cpu0 = _cpu_seconds()
        start = time.perf_counter()  # wall time: the removal runs on every core
        total = unmask_answers(masked, answers, cohort, t, alive, dropped, masked_with, ROUND, m,
                               packing=packing, workers=os.cpu_count() or 1)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_seconds() - cpu0)
        exact = exact and bool(np.array_equal(total, plain))
    return walls, cpus, exact


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the unmask's worker processes)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(n: int, dropout: float, bits: int, d: int, seed: int = 0, repeats: int = 1) -> dict:
    params = choose_parameters(n)
    k, t, packing = params.neighbours, params.threshold, params.packing
    m = quantize.field_bits(bits, n)
    ids = [f"dev-{i:05d}" for i in range(n)]
    graph = neighbour_graph(ids, k, seed)
    sessions = {x: sess.start(x, ROUND, MODEL) for x in ids}
    rng = np.random.default_rng(seed)
    cpu, upload = _device_round(ids[0], graph, sessions, t, packing, d, bits, m, rng)
    load_before = os.getloadavg()[0]
    walls, cpus, exact = _coordinator_unmask(ids, graph, sessions, t, packing, d, bits, m, dropout, rng, repeats)
    floor = math.ceil(d * m / 8)
    return {"devices": n, "dropout_fraction": dropout, "bits": bits, "dimension": d, "field_bits": m,
            "neighbours": k, "threshold": t, "packing": packing, "bytes_per_device": upload,
            "floor_bytes_per_device": floor,
            "upload_over_floor": round(upload / floor, 4), "plain_bytes_per_device": math.ceil(d * bits / 8),
            "flower_bytes_per_device": 4 * d, "device_cpu_seconds": round(cpu, 4),
            "unmask_seconds": round(min(walls), 4), "unmask_seconds_median": round(statistics.median(walls), 4),
            "unmask_seconds_all": [round(w, 4) for w in walls], "unmask_cpu_seconds": round(min(cpus), 4),
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "exact": exact}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench secagg", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, required=True, help="write the results here")
    p.add_argument("--devices", default="100,500,1000", help="comma list of cohort sizes")
    p.add_argument("--dropouts", default="0,0.1,0.3", help="comma list of dropout fractions")
    p.add_argument("--bits", default="8,16", help="comma list of input widths")
    p.add_argument("--dimension", type=int, default=100_000, help="coordinates masked per device")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    p.add_argument("--repeats", type=int, default=3, help="time each unmask this many times (min and median)")
    args = p.parse_args(argv)
    try:
        cohorts = [int(x) for x in args.devices.split(",")]
        dropouts = [float(x) for x in args.dropouts.split(",")]
        widths = [int(x) for x in args.bits.split(",")]
    except ValueError as exc:
        p.error(str(exc))
    if min(cohorts) < 2 or not all(0 <= f < 1 for f in dropouts) or args.dimension < 1 or args.repeats < 1:
        p.error("need --devices >= 2, --dropouts in [0, 1), --dimension >= 1 and --repeats >= 1")
    if max(cohorts) > MAX_COUNT or args.repeats > MAX_COUNT:  # 10**30 devices ran for ever
        p.error(f"--devices and --repeats: at most {MAX_COUNT:,}")
    check_parent_folder(args.json_path, "--json")  # a file in the way: told now, not after the runs
    runs = []
    for n in cohorts:
        for dropout in dropouts:
            for bits in widths:
                try:
                    runs.append(measure(n, dropout, bits, args.dimension, args.seed, args.repeats))
                except ValueError as exc:  # bits out of range, or too few survivors to unmask
                    p.error(f"--devices {n} --dropouts {dropout} --bits {bits}: {exc}")
                print(json.dumps(runs[-1]), flush=True)
    doc = {"runs": runs, "parameters": asdict(choose_parameters(max(r["devices"] for r in runs))),
           "security": {"sigma": 40, "eta": 20, "dropout_designed_for": 0.3, "corrupt": 0.0},
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}}
    # its folder made when missing (`open` raised FileNotFoundError there, after every run)
    atomic_write_bytes(Path(args.json_path), json.dumps(doc, indent=2).encode())
    return 0 if all(r["exact"] for r in runs) else 1
