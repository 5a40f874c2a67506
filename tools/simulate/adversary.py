"""Who attacks in a simulation, and how: attackers are a fixed share of the population, chosen
once from the seed and sampled for rounds like any device; each runs the real device code with
poisoned data (label_flip, backdoor) and/or a malicious rewrite of its delta (the rest).

    spec = AttackSpec("alie", fraction=0.2)
    attackers = choose_attackers(device_ids, spec.fraction, seed)
    client = poison_client(client, spec, data, rng)                 data-level attacks
    mal = malicious_delta(spec, collusion, n, eta, x, round, dev, rng)  update-level attacks
    step = attack_step(spec, collusion, n, eta)                     the same as a post-processing
                                                                    chain step (Delta, ctx, rng) -> Delta

Today's simulator applies malicious_delta to the update the device keeps for upload
(malicious.py; colluders on release, conspiracy.py); attack_step is the same rewrite in the
shape of the device's post-processing chain. The formulas are in attacks.py. Simulation only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from fedge.coordinator.robust.flat import flatten, unflatten
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import MAX_EXAMPLES
from fedge.tools.datasets import ClientData, FederatedDataset

from . import attacks
from .errors import AttackError

DATA_ATTACKS = ("label_flip", "backdoor")
UPDATE_ATTACKS = ("sign_flip", "scale", "backdoor", "gaussian", "alie", "ipm", "min_max", "min_sum", "nan", "poison")
COLLUDING = ("alie", "ipm", "min_max", "min_sum")
ATTACKS = ("label_flip", "backdoor", "sign_flip", "scale", "gaussian", "alie", "ipm", "min_max", "min_sum",
           "huge_weight", "nan", "poison")


@dataclass(frozen=True)
class AttackSpec:
    name: str
    fraction: float = 0.2  # share of the population that attacks
    omniscient: bool = False  # colluders also see honest devices' deltas
    scale: float = 0.0  # sign_flip: the flipped delta's factor (0 = 1); scale/backdoor: boost (0 = n / eta)
    sigma: float = 0.05  # gaussian: std of each coordinate
    epsilon: float = 0.5  # ipm
    perturbation: str = "std"  # min_max / min_sum: unit, std or sign
    target: int = 0  # backdoor: the class stamped inputs should become
    poison_fraction: float = 0.5  # backdoor: share of the attacker's samples stamped
    trigger_size: int = 0  # backdoor: side of the square stamped in the corner; 0 = max(2, height // 7)
    weight_factor: float = 1e6  # huge_weight: claimed examples = true examples x this
    poison_value: float = 5.0  # poison: every value of the delta, sent with the largest claim the codec takes

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise AttackError(f"attack {self.name!r}: choose one of {', '.join(ATTACKS)}")
        if not 0 < self.fraction < 1:
            raise AttackError(f"the attackers' fraction must be in (0, 1), got {self.fraction}")
        if not (self.scale >= 0 and math.isfinite(self.scale)):
            raise AttackError(f"the attack's scale must be finite and >= 0 (0 = the attack's own), got {self.scale}")
        if self.perturbation not in ("unit", "std", "sign"):
            raise AttackError(f"perturbation {self.perturbation!r}: use unit, std or sign")


def check_attack_fits(spec: AttackSpec | None, transport: str, per_round: int, secure: bool = False) -> None:
    """Before any folder or model is made: a run this attack cannot take is one named ConfigError.
    per_round: reports a round asks for, min(clients_per_round, devices); secure: secure aggregation on."""
    if spec is None or spec.name not in COLLUDING:
        return
    if transport != "memory":
        raise ConfigError(f"--attack {spec.name}: colluding attacks run on the in-memory transport only")
    if secure:  # conspiracy.py holds and rewrites Update frames; a secure round sends masked inputs instead
        raise ConfigError(f"--attack {spec.name} with secure aggregation: the colluders rewrite the plain updates "
                          f"they pool, and a secure round sends masked inputs, so they would send honest ones (it "
                          f"once ran as if no one attacked); use a non-colluding attack, or turn secure "
                          f"aggregation off")
    if spec.name == "alie" and per_round < 2:  # once an AttackError from the first attacker's task, mid-run
        raise ConfigError(f"--attack alie needs rounds of 2 or more reports (--clients-per-round and --devices): "
                          f"its z comes from a minority of colluders in a round of n, and a round of {per_round} "
                          f"has none")


def choose_attackers(device_ids, fraction: float, seed: int) -> frozenset[str]:
    """round(fraction x N) devices, fixed for the run; at least one."""
    ids = sorted(device_ids)
    count = max(1, round(fraction * len(ids)))
    rng = np.random.default_rng([seed, 0xA77AC])
    return frozenset(ids[i] for i in rng.choice(len(ids), size=count, replace=False))


def trigger_for(data: FederatedDataset, spec: AttackSpec) -> attacks.Trigger:
    """The backdoor's trigger for data's examples. Images (the shipped data sets, in [0, 1]): a
    square of side trigger_size (0: max(2, height // 7)) in the bottom-right corner, at 1.0.
    Flat features (`--data DIR`, synthetic: no image shape): the last side x side features, side
    trigger_size (0: max(2, isqrt(features) // 7), about an image's share), at the largest value
    in the devices' training data, as 1.0 is for the images. The side was the feature count // 7
    there, a square larger than the input, and the run failed with 'trigger needs at least one
    feature index, all >= 0'."""
    if data.image_shape:
        shape, value = tuple(data.image_shape[-2:]), 1.0
        side = spec.trigger_size or max(2, shape[0] // 7)
    else:
        shape = tuple(data.input_shape)
        side = spec.trigger_size or max(2, math.isqrt(int(np.prod(shape))) // 7)
        value = max(float(np.max(c.x_train)) for c in data.clients if np.size(c.x_train))  # a device may hold none
    return attacks.corner_trigger(shape, spec.target, side, value)


def poison_client(client: ClientData, spec: AttackSpec, data: FederatedDataset, rng: np.random.Generator) -> ClientData:
    """The attacker's training data after a data-level attack (its test split stays clean)."""
    if spec.name == "label_flip":
        return dataclasses.replace(client, y_train=attacks.label_flip(client.y_train, data.num_classes))
    if spec.name == "backdoor":
        x, y = attacks.backdoor_data(client.x_train, client.y_train, trigger_for(data, spec), spec.poison_fraction, rng)
        return dataclasses.replace(client, x_train=x.astype(client.x_train.dtype), y_train=y)
    return client


def malicious_delta(spec: AttackSpec, collusion: attacks.Collusion, n: int, eta: float, x: np.ndarray,
                    round_id: int, device_id: str, rng: np.random.Generator) -> np.ndarray:
    """The flat delta an attacker sends instead of its honest x.

    Colluders deposit x and build the attack from what the collusion holds at that moment: the
    round's earlier colluders (and, omniscient, earlier honest reports) plus their own. In the
    one-thread simulator devices train one after another, so the first colluder of a round
    knows only itself (ALIE then sends its own delta: std = 0)."""
    if spec.name in COLLUDING:
        collusion.deposit(round_id, device_id, x, attacker=True)
        known = collusion.known(round_id)
    if spec.name == "sign_flip":
        return attacks.sign_flip(x, spec.scale or 1.0)
    if spec.name in ("scale", "backdoor"):
        return x * spec.scale if spec.scale else attacks.scale_replace(x, n, eta)
    if spec.name == "gaussian":
        return attacks.gaussian(x, spec.sigma, rng)
    if spec.name == "alie":
        # m: the colluders of this round, at most a minority of n (the formula's premise: with a
        # majority no supporters are needed and s <= 0); z is then the largest minority's.
        return attacks.alie(known, n, max(1, min(collusion.attackers(round_id), (n - 1) // 2)))
    if spec.name == "ipm":
        return attacks.ipm(known, spec.epsilon)
    if spec.name == "min_max":
        return attacks.min_max(known, spec.perturbation)[0]
    if spec.name == "min_sum":
        return attacks.min_sum(known, spec.perturbation)[0]
    if spec.name == "nan":
        return attacks.nan_update(x)
    if spec.name == "poison":
        return np.full_like(x, spec.poison_value)
    return x  # data-level attacks and huge_weight send what they trained


def attack_step(spec: AttackSpec, collusion: attacks.Collusion, n: int, eta: float):
    """The malicious chain step (Delta, TaskContext, rng) -> Delta for spec's update-level attack."""
    if spec.name not in UPDATE_ATTACKS:
        raise AttackError(f"{spec.name} is not an update-level attack")
    if n < 1 or not eta > 0:
        raise AttackError(f"attack step needs n >= 1 reports and a server lr eta > 0, got n={n}, eta={eta}")

    def step(delta, ctx, rng: np.random.Generator):
        mal = malicious_delta(spec, collusion, n, eta, flatten(delta.tensors), ctx.round_id, ctx.device_id, rng)
        return dataclasses.replace(delta, tensors=unflatten(mal, delta.tensors))

    return step


def claimed_examples(spec: AttackSpec, true_examples: int) -> int:
    """What the attacker says it trained on (huge_weight and poison lie, as much as the codec
    lets a message claim: a larger claim is refused as malformed before it counts)."""
    if spec.name == "poison":
        return MAX_EXAMPLES
    if spec.name != "huge_weight":
        return true_examples
    return int(min(attacks.huge_weight(true_examples, spec.weight_factor), MAX_EXAMPLES))
