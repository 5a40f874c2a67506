"""One secure round driven end to end in memory, shared by the fleet tests in tests/secagg
(test_fleet_secagg_rounds.py, test_fleet_secagg_hostile.py and the tests that import these
names): the settings (SECURE, SETTINGS), `_run_round`, the oracle `_expected_mean`, the
plain FedAvg of the devices' quantized vectors, and identity keys (`provision`, `hand_out`).
The tiny model is tests/secagg/conftest.py's `model` fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedge.coordinator.secagg.config import SecAggConfig
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.secagg import identity, quantize

SECURE = SecAggConfig(enabled=True, bits=16, clip_range=0.5)
SETTINGS = dict(secure_aggregation=SECURE, weighting="equal", compression=CompressionSpec(quant_bits=32, clip_norm=4.0))


def _run_round(fleet, drop_at_stage: int | None = None, drop: str = ""):
    """Drive one round: drain, tick, advance the clock past a stage deadline when stuck.
    `drop` stops answering once the machine reaches stage `drop_at_stage`."""
    c = fleet.coordinator
    assert c.begin_round()
    for _ in range(40):
        if drop and c.round is not None and c.round.machine.stage >= drop_at_stage:
            fleet.agents = [a for a in fleet.agents if a.device_id != drop]
        fleet.drain()
        record = c.tick()
        if record is not None:
            return record
        fleet.clock.advance(1.0 if c.round.machine.stage_full else SECURE.stage_deadline_s + 1)
    raise AssertionError("the round never closed")


def _expected_mean(fleet, survivors):
    """The plain FedAvg of the devices' quantized vectors: their integer sum, decoded."""
    values = {a.device_id: next(iter(a.secagg.inputs.values())) for a in fleet.agents if a.device_id in survivors}
    spec = next(iter(values.values()))[2]
    total = np.sum(np.stack([v[0] for v in values.values()]).astype(np.int64), axis=0)
    return quantize.decode(total, len(values), spec.rotation_seed, spec.clip_range, spec.bits) / len(values)


def _flat(params):
    return np.concatenate([np.asarray(params[k], dtype=np.float64).reshape(-1) for k in sorted(params)])


def provision(device_ids, folder: Path, unlisted=()) -> tuple[dict[str, bytes], Path]:
    """Each device's identity private key, and the fleet's directory file of their public keys
    (as `fedge provision identity` writes it) without the devices in `unlisted`."""
    keys = {d: identity.generate_identity() for d in device_ids}
    path = folder / "identities.json"
    path.write_text(json.dumps({d: public.hex() for d, (_, public) in keys.items() if d not in unlisted}))
    return {d: private for d, (private, _) in keys.items()}, path


def hand_out(fleet, privates: dict[str, bytes], directory: dict[str, bytes], forged=()) -> None:
    """Every agent signs with its key and checks its neighbours against `directory`; the agents
    in `forged` sign with a key of their own that no directory holds."""
    for a in fleet.agents:
        private = identity.generate_identity()[0] if a.device_id in forged else privates[a.device_id]
        a.secagg.identity_private, a.secagg.directory = private, directory
