"""The Store in memory: a coordinator without state_db, and the simulator.

It keeps the same contract as the SQLite RoundStore (store.py), minus surviving the process:
a Coordinator built again on the same MemoryStore resumes the open round by replaying its
updates, as one built on the same SQLite file would. Payloads are held by reference (the
Update's own bytes) and dropped when their round closes.
"""

from __future__ import annotations

from collections import deque
from contextlib import nullcontext
from dataclasses import replace

from fedge.edge_runtime.kernel.errors import ConfigError

from .sql_store import check_keeps
from .store import StoredDecline, StoredDevice, StoredRound, StoredUpdate
from .stored import closed_plan
from .strategies import ServerState

_KEEP_KEY_ROUNDS = 8  # closed rounds whose update keys are kept to spot late duplicates


class MemoryStore:
    path = ":memory:"

    def __init__(self, keep_key_rounds: int = _KEEP_KEY_ROUNDS, keep_rounds: int = 0):
        """keep_rounds: closed rounds whose records (and evaluation records) are kept; 0 = all, as RoundStore's."""
        check_keeps(keep_key_rounds=keep_key_rounds, keep_rounds=keep_rounds)
        self.keep_rounds = keep_rounds
        self.bound: dict[str, str] = {}
        self.state: ServerState | None = None
        self.open: StoredRound | None = None
        self.events: list[StoredUpdate | StoredDecline] = []  # of the open round, in seq order
        self.records: dict[int, dict] = {}  # closed round id -> record, in closing (= round id) order
        # Keys of closed rounds only: a key of the open round is found in the round itself.
        self.closed_keys: deque[dict[tuple[str, int, str], str]] = deque(maxlen=keep_key_rounds)
        self.devices: dict[str, StoredDevice] = {}
        self.refresh_since: float | None = None  # refresh_began
        self.evaluations: deque[tuple[int, dict]] = deque()  # (round id, record), in the order they finished
        self.ledger: dict[int, dict] = {}  # round id -> privacy charge (dp RoundPlan JSON)

    def bind(self, model_id: str, strategy: str) -> None:
        for key, value in (("model_id", model_id), ("strategy", strategy)):
            if self.bound.setdefault(key, value) != value:
                raise ConfigError(f"this memory store holds state for {key} {self.bound[key]!r}, not {value!r}")

    def load_state(self) -> ServerState | None:
        return self.state

    def save_initial_state(self, state: ServerState) -> None:
        if self.state is None:
            self.state = state

    def next_round_id(self) -> int:
        if self.open is not None:
            return self.open.round_id
        return max(self.records, default=0) + 1

    def open_round(self, rnd: StoredRound) -> None:
        if self.open is not None:
            raise ValueError(f"round {self.open.round_id} is still open")
        self.open, self.events = rnd, []

    def load_open_round(self) -> StoredRound | None:
        if self.open is None:
            return None
        return replace(self.open, events=tuple(sorted(self.events, key=lambda e: e.seq)))

    def add_update(self, round_id: int, *updates: StoredUpdate) -> None:
        self._require_open(round_id)
        self.events.extend(updates)

    def add_decline(self, round_id: int, decline: StoredDecline) -> None:
        self._require_open(round_id)
        if not any(isinstance(e, StoredDecline) and e.device_id == decline.device_id for e in self.events):
            self.events.append(decline)

    def counted_digest(self, device_id: str, round_id: int, update_id: str) -> str | None:
        key = (device_id, round_id, update_id)
        return next((keys[key] for keys in self.closed_keys if key in keys), None)

    def commit_round(self, round_id: int, state: ServerState, record: dict, closed_wall: float,
                     charge: dict | None = None) -> None:
        self._require_open(round_id)
        if self.state is not None and state.version != self.state.version + 1:
            raise ValueError(f"round {round_id} commits version {state.version}, but the store holds "
                             f"{self.state.version}")
        self._refuse_second_charge(round_id, charge)  # before the model moves: a refusal changes nothing
        self.state = state
        self._close(round_id, record, charge)

    def abandon_round(self, round_id: int, record: dict, closed_wall: float, charge: dict | None = None) -> None:
        self._require_open(round_id)
        self._close(round_id, record, charge)

    def charge_round(self, round_id: int, charge: dict) -> None:
        self._require_open(round_id)
        if round_id in self.ledger:
            raise ValueError(f"round {round_id} is charged already")
        self.ledger[round_id] = closed_plan(charge)

    def privacy_ledger(self) -> list[dict]:
        return [self.ledger[r] for r in sorted(self.ledger)]

    def round_records(self) -> list[dict]:
        return [self.records[r] for r in sorted(self.records)]

    def add_evaluation(self, round_id: int, record: dict) -> None:
        self.evaluations.append((round_id, record))

    def evaluation_records(self) -> list[dict]:
        return [record for _, record in self.evaluations]

    def save_device(self, device: StoredDevice) -> None:
        self.devices[device.device_id] = device

    def save_devices(self, devices: list[StoredDevice]) -> None:
        self.devices.update((d.device_id, d) for d in devices)

    def write_deadline(self, seconds: float):
        return nullcontext()  # nothing to wait on

    def refresh_began(self, wall: float) -> float:
        if self.refresh_since is None:
            self.refresh_since = wall
        return self.refresh_since

    def load_devices(self) -> list[StoredDevice]:
        return [self.devices[d] for d in sorted(self.devices)]

    def close(self) -> None:
        pass

    def _require_open(self, round_id: int) -> None:
        if self.open is None or self.open.round_id != round_id:
            raise ValueError(f"round {round_id} is not open in memory")

    def _refuse_second_charge(self, round_id: int, charge: dict | None) -> None:
        if charge is not None and round_id in self.ledger:
            raise ValueError(f"round {round_id} is charged already")

    def _close(self, round_id: int, record: dict, charge: dict | None) -> None:
        self._refuse_second_charge(round_id, charge)
        if charge is not None:
            self.ledger[round_id] = closed_plan(charge)  # the open round (and its noise key) goes below
        self.closed_keys.append({(e.device_id, round_id, e.update_id): e.digest for e in self.events
                                 if isinstance(e, StoredUpdate)})
        self.records[round_id] = record
        self.open, self.events = None, []
        self._prune_rounds(round_id)

    def _prune_rounds(self, round_id: int) -> None:
        """RoundStore's keep_rounds (SqlStore._prune_rounds): records of rounds up to round_id -
        keep_rounds go, and the evaluations before the first one of a later round."""
        if self.keep_rounds <= 0:
            return
        cutoff = round_id - self.keep_rounds
        while self.records and next(iter(self.records)) <= cutoff:  # closing order is round id order
            del self.records[next(iter(self.records))]
        while self.evaluations and self.evaluations[0][0] <= cutoff:
            self.evaluations.popleft()
