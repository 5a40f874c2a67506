"""Restart: the coordinator's state from its Store, and the open round rebuilt by replay.

The round's machine comes back with its deadline carried over in wall time; then every
stored event is replayed in acceptance order through the same paths the live round used
(admission's decoder, OpenRound.add, the machine's Declined event), so the aggregator is
bit-identical to the one the stopped process held.
"""

from __future__ import annotations

from collections.abc import Callable

from fedge.edge_runtime.kernel.errors import ConfigError

from .admission import replayed
from .dp.round import RoundPlan
from .records import OpenRound
from .rounds import Declined, RoundMachine, on_event, sync_round
from .store import Store, StoredRound, StoredUpdate
from .strategies import ServerState


def restore_state(store: Store, model_id: str, strategy: str, initial: ServerState,
                  shapes: dict[str, tuple[int, ...]]) -> ServerState:
    """The stored model and strategy state; a fresh store is seeded with `initial`."""
    store.bind(model_id, strategy)
    loaded = store.load_state()
    if loaded is None:
        store.save_initial_state(initial)
        return initial
    got = {k: tuple(v.shape) for k, v in loaded.params.items()}
    if got != shapes:
        raise ConfigError(f"{store.path}: stored params {got} do not fit the model's shared params {shapes}")
    return loaded


def resume(stored: StoredRound, version: int, now: float, wall: float,
           make_round: Callable[[RoundMachine, dict[str, str], float, RoundPlan | None], OpenRound],
           path: object = "") -> OpenRound:
    """Rebuild an open round from the store (see the module docstring)."""
    if not stored.selected:  # async mode's open buffer selects no one (coordinator/async_mode)
        raise ConfigError(f"{path}: round {stored.round_id} is an open async buffer; finish it with "
                          "mode = 'async' before switching to sync")
    if stored.model_version != version:
        raise ConfigError(f"{path}: open round {stored.round_id} was based on version "
                          f"{stored.model_version}, the stored model is {version}")
    machine = sync_round(stored.round_id, stored.selected, stored.target, stored.quorum,
                         now + (stored.deadline_wall - wall))
    # a DP round comes back with its stored plan: the same z, S and W, so the same noise
    rnd = make_round(machine, stored.tasks, now - (wall - stored.started_wall), RoundPlan.from_json(stored.privacy))
    for event in stored.events:
        if isinstance(event, StoredUpdate):
            rnd.add(replayed(event, rnd.ctx))
        else:
            rnd.decline_from.add(event.device_id)
            rnd.machine, _ = on_event(rnd.machine, Declined(event.device_id, event.reason))  # paced before the stop
        rnd.events = event.seq + 1
    return rnd
