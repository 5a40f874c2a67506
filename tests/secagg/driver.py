"""The whole protocol in memory, with the coordinator's relaying done by hand: what the
coordinator sees is exactly the `view` this returns (public keys, ciphertexts, masked
vectors, unmask answers), so the tests can check both the sum and the view."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.graph import neighbour_graph, packing_for
from fedge.edge_runtime.kernel.secagg.masking import mask_input, sum_mod
from fedge.edge_runtime.kernel.secagg.recovery import unmask_answers

MODEL = "ab" * 32


@dataclass
class View:
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    ciphertexts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    answers: dict[str, dict] = field(default_factory=dict)


def run(values: dict[str, np.ndarray], field_bits: int, k: int, t: int, round_id: int = 7, seed: int = 1,
        drop_before_share=(), drop_after_share=(), silent_in_unmask=(), lie=None,
        **named) -> tuple[np.ndarray, tuple[str, ...], View]:
    """(unmasked sum of the survivors' values, survivors, the coordinator's view). `lie` turns the
    unmask answers into the ones the coordinator gets; `named` (left_out, dealers) goes to
    unmask_answers, which checks the dropped devices' mask keys against the advertised ones."""
    cohort = tuple(sorted(values))
    graph = neighbour_graph(cohort, k, seed)
    view = View()
    sessions = {d: sess.start(d, round_id, MODEL) for d in cohort}
    advertised = {d: s.advertised for d, s in sessions.items()}
    sharing = [d for d in cohort if d not in set(drop_before_share)]
    inbox: dict[str, dict[str, bytes]] = {d: {} for d in cohort}
    for d in sharing:
        sessions[d], out = sess.shares_for_neighbours(
            sessions[d], cohort, graph[d], t, {p: advertised[p] for p in graph[d] if p in sharing})
        for peer, blob in out.items():
            inbox[peer][d] = blob
            view.ciphertexts[(d, peer)] = blob
    length = len(next(iter(values.values())))
    for d in sharing:
        sessions[d] = sess.receive_shares(sessions[d], inbox[d])
    survivors = tuple(d for d in sharing if d not in set(drop_after_share))
    for d in survivors:
        view.masked[d] = mask_input(values[d], d, sessions[d].self_seed, sessions[d].mask.private,
                                    sess.masking_peers(sessions[d]), round_id, field_bits)
    dropped = tuple(d for d in sharing if d not in survivors)
    for d in survivors:
        if d in set(silent_in_unmask):
            continue
        sessions[d], view.answers[d] = sess.reveal(sessions[d], survivors, dropped, MODEL)
    dropped_peers = {g: {s: advertised[s].mask_public for s in survivors if g in sessions[s].received}
                     for g in dropped}
    if lie is not None:
        view.answers = lie(view.answers)
    total = unmask_answers(sum_mod(view.masked.values(), field_bits, length), view.answers, cohort, t, survivors,
                           dropped, dropped_peers, round_id, field_bits,
                           packing=packing_for(min(k, len(cohort) - 1), len(cohort)),
                           mask_publics={g: advertised[g].mask_public for g in dropped}, **named)
    return total, survivors, view
