"""Run a simulated fleet: real DeviceRuntime/DeviceAgent and Coordinator over the in-memory
broker, real onnxruntime training, evaluation after every round.

The fleet trains the spec that --personalization derives from the base spec
(personalization.py). With --new-devices K the last K clients never join; after the last
round they are scored on the global model, as received and after head-only local steps
(DeviceRuntime.personalize)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.rounds import Phase
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.trainer import available_backends
from fedge.models.build import build_artifacts
from fedge.models.spec import ModelSpec, load_spec
from fedge.tools.datasets import ClientData, FederatedDataset, build_federated, load_npz_dir
from fedge.tools.simulate.model_choice import check_fits, check_scorable, choose_spec
from fedge.tools.standardizing import check_held_out, standardize_devices
from fedge.tools.synthetic import synthetic

from . import adversary
from . import baselines as baseline_runs
from .attacks import Collusion
from .config import SimConfig, effective_hyper
from .conspiracy import Conspiracy
from .guard_split import held_back, write_guard_set
from .malicious import MaliciousRuntime
from .personalization import personalized_spec
from .scoring import Scorer
from .sharing import SharedMaliciousRuntime, SharedModels, SharedRuntime
from .stragglers import StragglerPlan
from .summaries import left_out_summary, privacy_summary
from .what_ran import what_ran

log = logging.getLogger("fedge.simulate")


class SimClock:
    """Real monotonic time plus a skip offset, so a stalled round can jump to its deadline."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.offset += max(0.0, seconds)


@dataclass
class SimResult:
    config: dict
    model: dict
    rounds: list[dict] = field(default_factory=list)
    baselines: dict = field(default_factory=dict)
    new_devices: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def load_data(cfg: SimConfig, named: ModelSpec | None = None) -> FederatedDataset:
    """The devices' data; `named`: cfg.model's spec when the caller loaded it already. ConfigError
    when the coordinator's max_devices could not register them all: the run went on, the devices
    past the cap were refused as registry_full, and each scored 0 in the personalized mean."""
    data = _devices_data(cfg, named)
    if len(data.clients) > cfg.coordinator.max_devices:
        raise ConfigError(f"{len(data.clients):,} devices, but the coordinator's max_devices is "
                          f"{cfg.coordinator.max_devices:,}: the rest could never register; raise max_devices")
    return data


def _devices_data(cfg: SimConfig, named: ModelSpec | None) -> FederatedDataset:
    guarded = cfg.coordinator.privacy.enabled or cfg.coordinator.secure_aggregation.enabled
    if cfg.standardize_with == "fleet" and guarded and cfg.standardize is not False:
        log.warning("--standardize-with fleet with privacy or secure aggregation on: the fleet's pooled mean and "
                    "std are computed from every device's training data outside the DP accountant and the masked "
                    "sum (--standardize-with device, the default here, keeps them on each device)")
    if cfg.data_dir:  # standardize None: auto (tools/standardizing.py), which an imported --model turns off
        if named is None and cfg.model and cfg.standardize is None:
            named = load_spec(cfg.model)
        pretrained = str(cfg.model) if named is not None and named.onnx else ""
        return load_npz_dir(cfg.data_dir, standardize=cfg.standardize, pretrained=pretrained,
                            using=cfg.standardize_using, held_out=cfg.new_devices)
    if cfg.synthetic:
        data = synthetic(cfg.devices, cfg.split_alpha, cfg.split_beta, seed=cfg.seed)
    else:
        exclude = held_back(cfg)  # pretrain's proxy split and the coordinator's guard set
        data = build_federated(cfg.dataset, cfg.devices, cfg.partition, cfg.seed, alpha=cfg.split_alpha,
                               classes_per_client=cfg.classes_per_client, test_fraction=cfg.test_fraction,
                               exclude=exclude)
    return standardize_devices(data, cfg.standardize_using, cfg.new_devices) if cfg.standardize else data


@dataclass
class FleetSetup:
    """Everything both fleet drivers (in-memory and MQTT) build the same way."""

    cfg: SimConfig
    data: FederatedDataset
    spec: ModelSpec
    manifest: object
    model: ModelRuntime
    art_dir: Path
    backend: str
    hyper: TaskHyper
    ccfg: CoordinatorConfig
    scratch: Path  # fedge's own temporary folder: artifacts and device state; removed by close()
    new_clients: tuple[ClientData, ...] = ()  # held out: never train, scored on the final model
    attackers: frozenset[str] = frozenset()  # device ids that attack (cfg.attack_spec)
    poisoned: dict[str, ClientData] = field(default_factory=dict)  # attackers' training data after a data-level attack

    conspiracy: Conspiracy | None = None  # colluding attacks: holds the round's updates (conspiracy.py)
    shared: SharedModels | None = None  # in memory: one model copy for the whole fleet (sharing.py)

    def runtime(self, client, **kwargs) -> DeviceRuntime:
        attack = self.cfg.attack_spec
        cls = DeviceRuntime if self.shared is None else SharedRuntime
        if self.shared is not None:
            kwargs["shared"] = self.shared
        if client.client_id in self.attackers and attack.name not in (*adversary.COLLUDING, "label_flip"):
            # the rest rewrite their own upload; colluders are rewritten on release
            cls = MaliciousRuntime if self.shared is None else SharedMaliciousRuntime
            kwargs.update(attack=attack, collusion=Collusion(), n=self.ccfg.clients_per_round,
                          eta=strategy_from_config(self.ccfg).server_lr)
        client = self.poisoned.get(client.client_id, client)
        return cls(client.client_id, LocalData(client.x_train, client.y_train, client.x_test, client.y_test),
                             {self.manifest.model_id: self.art_dir}, self.scratch / "devices",
                             backend=self.backend, seed=self.cfg.seed, **kwargs)

    def close(self) -> None:
        """Remove the scratch folder (it was made by prepare(), never a user's path)."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    def coordinator(self, transport, clock) -> Coordinator:
        c = Coordinator(transport, strategy_from_config(self.ccfg), self.manifest, self.model.initial("shared"),
                        self.ccfg, clock=clock)
        c.privacy.noise_key = lambda round_id: ""  # DP noise from (seed, round): a run is reproducible (dp/budget.py)
        return c


def prepare(cfg: SimConfig, data: FederatedDataset | None = None) -> FleetSetup:
    """Data (built from cfg unless given), the personalized spec, artifacts and configs."""
    named = load_spec(cfg.model) if cfg.model else None  # before the data: auto asks whether it is pretrained
    data = data if data is not None else load_data(cfg, named)
    spec = personalized_spec(named or choose_spec(cfg, data), cfg.personalization)
    check_fits(data, spec)
    held = cfg.new_devices
    check_held_out(held, len(data.clients))
    data, new_clients = data.subset(0, len(data.clients) - held), data.clients[len(data.clients) - held:]
    check_scorable(data.clients, new_clients)
    if (held or cfg.personalization == "finetune") and spec.head == "personal":
        raise ConfigError(f"model {spec.name} has no global head: --new-devices and finetune need one")
    adversary.check_attack_fits(cfg.attack_spec, cfg.transport, min(cfg.coordinator.clients_per_round,
                                                                     len(data.clients)),
                                cfg.coordinator.secure_aggregation.enabled)
    # Devices keep state (private heads, residuals, control variates) and the artifacts in a fresh
    # temporary folder: a new simulation never resumes from an old one, and nothing lands in (or
    # is deleted from) the user's output folder. Only paths fedge created itself are removed.
    scratch = Path(tempfile.mkdtemp(prefix="fedge-sim-"))
    art_dir = scratch / "artifacts"
    try:
        manifest = build_artifacts(spec, art_dir, ort_training=cfg.backend == "ort-training")
        model = ModelRuntime(art_dir, expected_model_id=manifest.model_id)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    backend = available_backends()[0] if cfg.backend == "auto" else cfg.backend
    hyper = effective_hyper(cfg.coordinator.hyper, backend)
    base = cfg.coordinator
    # What a simulation always sets, whatever the config says (config.py's docstring says why).
    wanted = min(base.clients_per_round, len(data.clients))
    ccfg = replace(base, clients_per_round=wanted, min_reports=min(base.min_reports, wanted), seed=cfg.seed,
                   hyper=hyper, artifacts_dir=str(art_dir), state_db="",
                   evaluation=replace(base.evaluation, every_rounds=1, devices=0),  # every device, every round
                   # a spent budget ends the run; the experimenter's own fleet: its loss and evaluation are
                   # the run's results, as before (a deployment withholds them: dp/config.py)
                   privacy=replace(base.privacy, on_exhausted="stop", release_unnoised_metrics=True),
                   guard_set=write_guard_set(cfg, scratch) if cfg.guard_fraction else base.guard_set)
    attack = cfg.attack_spec
    attackers = (adversary.choose_attackers([c.client_id for c in data.clients], attack.fraction, cfg.seed)
                 if attack else frozenset())
    rng = np.random.default_rng([cfg.seed, 0xBAD])
    poisoned = {c.client_id: adversary.poison_client(c, attack, data, rng) for c in data.clients
                if c.client_id in attackers and attack.name in adversary.DATA_ATTACKS}
    conspiracy = None
    if attack is not None and attack.name in adversary.COLLUDING:
        conspiracy = Conspiracy(attack, attackers, ccfg.compression, ccfg.clients_per_round,
                                strategy_from_config(ccfg).server_lr)
    # Devices take turns in one thread only in memory; over MQTT each has its own model (sharing.py).
    shared = SharedModels({manifest.model_id: art_dir}) if cfg.transport == "memory" else None
    setup = FleetSetup(cfg, data, spec, manifest, model, art_dir, backend, hyper, ccfg, scratch, tuple(new_clients),
                       attackers, poisoned, conspiracy, shared)
    weakref.finalize(setup, shutil.rmtree, scratch, True)  # a caller that forgets close() leaves no litter
    return setup


class InMemoryFleet:
    """Devices and coordinator in one thread over the in-memory broker; a stalled round jumps
    its clock to the deadline, so simulated time never waits."""

    def __init__(self, setup: FleetSetup):
        self.broker = InMemoryBroker()
        self.clock = SimClock()
        self.coordinator = setup.coordinator(self.broker.connect("coordinator"), self.clock)
        self.coordinator.start()
        self.runtimes = [setup.runtime(client) for client in setup.data.clients]
        self.conspiracy = setup.conspiracy
        a = setup.cfg.agent_timings
        self.agents = [DeviceAgent(rt, self._link(rt.device_id), clock=self.clock, checkin_s=a.checkin_s,
                                   republish_s=a.republish_s, fetch_timeout_s=a.fetch_timeout_s)
                       for rt in self.runtimes]
        for agent in self.agents:
            agent.start()
        self.order_rng = np.random.default_rng([setup.cfg.seed, 1])
        self.plan = StragglerPlan(setup.cfg.seed)
        _drain(self.coordinator, self.agents, np.random.default_rng(setup.cfg.seed))

    def run_round(self):
        """The round's record, or None: the privacy budget refused it."""
        if not self.coordinator.begin_round():
            if self.coordinator.privacy.exhausted is not None:
                return None
            raise RuntimeError("no eligible devices checked in")
        if self.coordinator.round is None:  # an empty Poisson draw: closed as it began (coordinator/noise_round.py)
            return self.coordinator.tick()
        m = self.coordinator.round.machine
        late = self.plan.begin(m.round_id, m.selected, m.target)
        on_time = [a for a in self.agents if a.device_id not in late]
        record = None
        while record is None:
            progressed = self._settle(on_time)
            rnd = self.coordinator.round
            if rnd is not None and rnd.machine.phase == Phase.TRAINING:  # the on-time devices cannot close it
                progressed = self._settle(self.agents) or progressed
            record = self.coordinator.tick()
            if record is None and not progressed:
                self.clock.sleep(self.coordinator.config.round_deadline_s)  # nobody is left to answer
        self.plan.closed(record.round_id)
        self._settle(self.agents)  # the stragglers train and answer, too late; every device evaluates
        if self.coordinator.evaluations.run is not None:  # someone could not answer: it closes at its deadline
            self.clock.sleep(max(0.0, self.coordinator.evaluations.run.deadline - self.clock.now()))
            self.coordinator.evaluations.tick(self.clock.now())
        return record

    def _link(self, device_id: str):
        link = self.broker.connect(device_id)
        return self.conspiracy.uplink(link, device_id) if self.conspiracy else link

    def _settle(self, agents) -> bool:
        """Drain; with colluders, then deliver the held updates and drain again until quiet."""
        progressed = _drain(self.coordinator, agents, self.order_rng)
        while self.conspiracy is not None and self.conspiracy.release():
            progressed = _drain(self.coordinator, agents, self.order_rng) or True
        return progressed

    def close(self) -> None:
        pass


def run_simulation(cfg: SimConfig, on_round: Callable[[dict], None] | None = None,
                   data: FederatedDataset | None = None) -> SimResult:
    """Run cfg.rounds rounds and score every one; `data` replaces the data cfg describes."""
    setup = prepare(cfg, data)
    try:
        return _run(setup, on_round)
    finally:
        setup.close()


def _run(setup: FleetSetup, on_round: Callable[[dict], None] | None) -> SimResult:
    cfg = setup.cfg
    data, manifest, model, backend = setup.data, setup.manifest, setup.model, setup.backend
    result = SimResult(config={**asdict(cfg), **what_ran(setup)},
                       model={"name": setup.spec.name, "model_id": manifest.model_id,
                       "shared_params": sum(int(np.prod(p.shape)) for p in manifest.by_role("shared")),
                       "personal_params": sum(int(np.prod(p.shape)) for p in manifest.by_role("personal"))})
    xt, yt = data.union_test()
    scorer = Scorer(setup, model.embed(xt), yt)
    if cfg.attack == "backdoor":  # the same test inputs with the trigger stamped on
        trigger = adversary.trigger_for(data, cfg.attack_spec)
        scorer.backdoor = (model.embed(trigger.stamp(xt)), trigger.target)
    if cfg.transport == "mqtt":
        from .mqtt_fleet import MqttFleet

        fleet = MqttFleet(setup)
    else:
        fleet = InMemoryFleet(setup)
    records = []  # every closed round's record (the coordinator keeps only the latest)
    try:
        for _ in range(cfg.rounds):
            started = time.perf_counter()
            record = fleet.run_round()
            if record is None:  # the privacy budget refused the round: the run ends here
                break
            records.append(record)
            row = scorer.round_row(record, fleet.coordinator.state.params, fleet.runtimes,
                                   current_evaluation(fleet.coordinator))
            row["seconds"] = time.perf_counter() - started
            row["epsilon"] = fleet.coordinator.privacy.spent()  # after this round; None without privacy
            result.rounds.append(row)
            if on_round:
                on_round(row)
        co = fleet.coordinator
        abandoned = [r.why for r in records if not r.committed]
        reports = sum(r.reports for r in records)
        result.summary = {"rejections": dict(co.rejections), "declines": dict(co.declines),
                          "decline_details": dict(co.decline_details),
                          "abandoned": {why: abandoned.count(why) for why in dict.fromkeys(abandoned)},
                          "attackers": sorted(setup.attackers), "privacy": privacy_summary(co),
                          "screened": left_out_summary(co.left_out.screened, reports, setup.attackers),
                          "excluded": left_out_summary(co.left_out.excluded, reports, setup.attackers),
                          "sign_split": left_out_summary(co.left_out.sign_split, reports, setup.attackers)}
        final = fleet.coordinator.state.params
    finally:
        fleet.close()

    if setup.new_clients:
        result.new_devices = scorer.new_devices(final)
    if cfg.baselines:
        total_epochs = cfg.rounds * setup.hyper.epochs
        if "local" in cfg.baselines:
            result.baselines["local_only"] = baseline_runs.local_only(model, data, setup.hyper,
                                                                      cfg.local_epochs or total_epochs,
                                                                      backend, cfg.seed)
        if "central" in cfg.baselines:
            central_epochs = max(1, total_epochs * setup.ccfg.clients_per_round // max(1, len(data.clients)))
            result.baselines["central"] = baseline_runs.central(model, data, setup.hyper,
                                                                cfg.central_epochs or central_epochs,
                                                                backend, cfg.seed)
    return result


def current_evaluation(coordinator: Coordinator):
    """The latest federated evaluation of the coordinator's current model, or None. After an
    abandoned round that is the evaluation of the model the round left in place."""
    history = coordinator.evaluations.history
    return history[-1] if history and history[-1].model_version == coordinator.state.version else None


def _drain(coordinator: Coordinator, agents: list[DeviceAgent], rng: np.random.Generator) -> bool:
    """Deliver messages until every queue is empty; devices are served in a random order so
    that which over-selected devices report first is not fixed by their ids."""
    progressed = False
    while True:
        moved = False
        while coordinator.pump(0.0):
            moved = True
        for i in rng.permutation(len(agents)):
            while agents[i].poll(0.0):
                moved = True
                while coordinator.pump(0.0):
                    pass
        if not moved:
            return progressed
        progressed = True
