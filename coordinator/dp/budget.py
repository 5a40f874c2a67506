"""The privacy budget in the coordinator: before each round, plan it or refuse it.

The ledger is the store's (privacy_ledger: one charge per round whose noised aggregate was
computed, or per Poisson-sampled round however it ended; written in the transaction that
closes the round), so it survives a `kill -9` and
a round is never charged twice. Before dispatching round r the coordinator asks `plan`:
with the sampling event it is about to use (the devices it will ask, over-selection
included, out of the eligible ones) ε after r is computed by dp-accounting; over the target,
the round is refused: `exhausted` says why, the log says it once, and the fedge_privacy_*
gauges export it. The caller then stops the job or waits (privacy.on_exhausted).

z is privacy.noise_multiplier, or (0) calibrated once for privacy.rounds rounds at the first
round's population and cohort, then read back from the ledger (or the open round's stored
plan), so a restart keeps the z the rounds were run with.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import replace

from prometheus_client import CollectorRegistry, Gauge

from fedge.edge_runtime.kernel.errors import ConfigError

from .accountant import BudgetVerdict, RoundCharge, check_round, epsilon
from .calibrate import noise_multiplier_for
from .config import PrivacyConfig, check_count_noise
from .round import CLIP_GROUP, NOISE_KEY_HEX, RoundPlan, split_noise

log = logging.getLogger("fedge.coordinator.privacy")


class PrivacyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.spent = Gauge("fedge_privacy_epsilon_spent", "ε of the rounds charged so far (at privacy.delta)",
                           registry=r)
        self.target = Gauge("fedge_privacy_epsilon_target", "privacy.target_epsilon", registry=r)
        self.charged = Gauge("fedge_privacy_rounds_charged", "Rounds in the privacy ledger", registry=r)
        self.noise = Gauge("fedge_privacy_noise_multiplier", "z of the latest planned round", registry=r)
        self.exhausted = Gauge("fedge_privacy_budget_exhausted",
                               "1 when the next round was refused: it would spend more than the target", registry=r)


class PrivacyBudget:
    def __init__(self, config: PrivacyConfig, store, registry: CollectorRegistry) -> None:
        self.config = config
        self.store = store
        self.metrics = PrivacyMetrics(registry) if config.enabled else None
        self.exhausted: BudgetVerdict | None = None  # the latest refusal, until a round is allowed again
        self.refused_round: int | None = None
        self.warned: set[str] = set()  # the once-only warnings already said ("noise", "delta")
        self._calibrated: dict[tuple[int, int], float] = {}  # (population, cohort) -> z, before the first charge
        # A round's noise key (round.noise_rng) by round id: secret, from the OS. The simulator
        # gives none ("": the noise from (seed, round) alone), so that a simulated run is reproducible.
        self.noise_key: Callable[[int], str] = lambda round_id: secrets.token_hex(NOISE_KEY_HEX // 2)
        if config.enabled:  # one ledger composes one neighbouring relation (accountant.epsilon)
            ledger = {plan.sampling for plan in self._read_ledger()}
            if ledger - {config.sampling}:
                raise ConfigError(f"privacy.sampling = {config.sampling!r}, but the state file's privacy ledger "
                                  f"holds {sorted(ledger)} rounds: their neighbouring relations differ and one "
                                  "budget cannot compose both; keep the ledger's sampling or start a new state file")
            self._say_withheld()
        else:
            self._warn_off()
        if self.metrics is not None:
            self.metrics.target.set(config.target_epsilon)
            self.refresh()

    def _say_withheld(self) -> None:
        """What privacy does not cover, said once at start (PrivacyConfig.release_unnoised_metrics)."""
        if self.config.release_unnoised_metrics:
            log.warning("privacy.release_unnoised_metrics = true: the devices' mean training loss (round records, "
                        "logs, fedge_round_train_loss) and federated evaluation are released unnoised and uncharged, "
                        "outside the (ε, δ) guarantee")
        else:
            log.info("privacy on: the devices' training loss and federated evaluation are withheld (unnoised, they "
                     "are outside the ε guarantee); privacy.release_unnoised_metrics = true releases them")

    def _warn_off(self) -> None:
        """Privacy off on a state file whose ledger holds charges: the rounds now run without noise and
        uncharged, on top of what the earlier ones spent. Said once, at start, with that ε (at the
        latest charge's delta and accountant); a ledger that does not read is said as such."""
        try:  # the store's own read of the rows parses JSON too: a row that is none must not stop the start
            if not self.store.privacy_ledger():
                return
            plans = self._read_ledger()
            count = str(len(plans))
            spent = f"ε = {epsilon([p.charge() for p in plans], plans[-1].delta, plans[-1].accountant):.4g} at " \
                    f"δ = {plans[-1].delta:g} ({plans[-1].accountant})"
        except (ConfigError, ValueError, TypeError) as exc:
            count, spent = "its", f"an ε that cannot be read ({exc})"
        log.warning("privacy is off, but %s holds %s charged DP round(s) that spent %s: the rounds from now on "
                    "add no noise and are not charged, and nothing they release is covered by that guarantee",
                    self.store.path, count, spent)

    def check_open(self, stored) -> None:
        """ConfigError unless the open round's stored plan (a StoredRound's privacy) fits the budget
        as configured now. The round keeps its plan across a restart and its charge enters the ledger
        when it closes, but the checks above saw only the charged rounds and the config of their
        time: its sampling must be privacy.sampling (one ledger composes one neighbouring relation:
        a mixed ledger stops the next round's check), and ε after its charge, at the configured
        delta and accountant, within target_epsilon. Privacy off: nothing is checked (the round
        still runs and is charged by its plan). Privacy on and no plan (the round opened with privacy
        off): nothing to check here; the restart abandons it unread (restart.py, abandon_unplanned)."""
        where, cfg = f"{self.store.path}: open round {stored.round_id}", self.config
        try:  # read whether privacy is on or off: the round is resumed by this plan either way
            plan = RoundPlan.from_json(stored.privacy)
        except ValueError as exc:
            raise ConfigError(f"{where} holds a privacy plan fedge did not write ({exc}); restore the state file "
                              "from a backup") from None
        if not cfg.enabled or plan is None:
            return
        if plan.sampling != cfg.sampling:
            raise ConfigError(f"{where} was planned with privacy.sampling = {plan.sampling!r}, not "
                              f"{cfg.sampling!r}: one budget cannot compose both; finish it with sampling = "
                              f"{plan.sampling!r}, then change it with a new state file")
        if plan.mechanism == "distributed":  # a secure round: abandoned at the restart, no new charge; its
            return  # unmasking's (secagg/shell.py, _release) is in the ledger already if it began
        after = epsilon([*self.ledger(), plan.charge()], cfg.delta, cfg.accountant)
        if after > cfg.target_epsilon:
            raise ConfigError(f"{where} takes ε to {after:.4g} (δ={cfg.delta:g}) when charged, over privacy."
                              f"target_epsilon = {cfg.target_epsilon:g} (it was planned under the settings of "
                              f"its time); set target_epsilon >= {after:.4g} (or the delta it had) until it closes")

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    def ledger(self) -> list[RoundCharge]:
        return [plan.charge() for plan in self._read_ledger()]

    def _read_ledger(self) -> list[RoundPlan]:
        """The store's charges as plans; one that is no plan (a hostile state file) is a named ConfigError."""
        where = f"{self.store.path}: privacy_ledger"
        try:
            charges = self.store.privacy_ledger()  # the store parses each row's JSON
        except ValueError as exc:
            raise ConfigError(f"{where} holds a charge that is no JSON ({exc}); restore the state file from a "
                              "backup") from None
        plans = []
        for i, charge in enumerate(charges, 1):
            try:
                plans.append(RoundPlan.from_json(charge))
            except ValueError as exc:
                raise ConfigError(f"{where} entry {i} is no charge fedge wrote ({exc}); restore the state file "
                                  "from a backup") from None
        return plans

    def spent(self) -> float | None:
        """ε of the ledger at privacy.delta (the check's accountant); None when privacy is off."""
        return epsilon(self.ledger(), self.config.delta, self.config.accountant) if self.enabled else None

    def refresh(self) -> None:
        """The gauges from the ledger (after a round closed, and at start)."""
        if self.metrics is None:
            return
        self.metrics.spent.set(self.spent())
        self.metrics.charged.set(len(self.store.privacy_ledger()))

    def noise_multiplier(self, population: int, cohort: int) -> float:
        cfg = self.config
        if cfg.noise_multiplier > 0:
            return cfg.noise_multiplier
        charged = self.store.privacy_ledger()
        if charged:
            return float(charged[0]["noise_multiplier"])
        key = (population, cohort)  # a calibration takes seconds: once per sampling event, not per retry
        if key not in self._calibrated:
            self._calibrated[key] = noise_multiplier_for(cfg.target_epsilon, cfg.delta, cfg.rounds, population,
                                                         cohort, cfg.sampling, cfg.accountant)
        return self._calibrated[key]

    def plan(self, round_id: int, population: int, cohort: int, expected_cohort: int,
             extra: dict | None = None) -> RoundPlan | None:
        """The plan of round `round_id` asking `cohort` of `population` devices, or None: refused
        (then `exhausted` says why). Always None when privacy is off. `extra`: the committed
        ServerState.extra, where adaptive clipping left the current S."""
        cfg = self.config
        if not cfg.enabled:
            return None
        z = self.noise_multiplier(population, cohort)
        verdict = check_round(self.ledger(), RoundCharge(population, cohort, z, cfg.sampling), cfg.target_epsilon,
                              cfg.delta, cfg.accountant)
        self.metrics.noise.set(z)
        if not verdict.allowed:
            if self.refused_round != round_id:  # the loop asks again while it waits: say it once per round
                log.error("round %d refused: %s; on_exhausted = %s", round_id, verdict.why, cfg.on_exhausted)
            self.exhausted, self.refused_round = verdict, round_id
            self.metrics.exhausted.set(1)
            return None
        self.exhausted, self.refused_round = None, None
        self.metrics.exhausted.set(0)
        log.info("round %d: privacy plan %d of %d devices, z=%.4g; ε after it %.4f of %g (charged if its noised "
                 "sum is released)", round_id, cohort, population, z, verdict.epsilon_after, cfg.target_epsilon)
        self._warn_once(round_id, population, cohort, expected_cohort, z)
        plan = RoundPlan(population, cohort, z, cfg.clip_norm, expected_cohort, cfg.delta, cfg.target_epsilon,
                         verdict.epsilon_after, cfg.sampling, cfg.accountant, mechanism=cfg.mechanism,
                         noise_key=self.noise_key(round_id))
        if not cfg.target_quantile:
            return plan
        clip = float((extra or {}).get(CLIP_GROUP, {}).get("clip_norm", cfg.clip_norm))
        check_count_noise(cfg.clip_count_stddev, z)  # a calibrated z is known only now
        count_stddev = cfg.clip_count_stddev or max(expected_cohort / 20, z)
        return replace(plan, clip_norm=clip, delta_noise_multiplier=split_noise(z, count_stddev),
                       count_stddev=count_stddev, target_quantile=cfg.target_quantile, clip_lr=cfg.clip_lr)

    def _warn_once(self, round_id: int, population: int, cohort: int, expected_cohort: int, z: float) -> None:
        """Settings the budget runs but whose guarantee or learning an operator should hear about, once each."""
        cfg, said = self.config, self.warned
        if cfg.delta * population >= 1 and "delta" not in said:
            # (ε, δ) with δ >= 1/n allows a release that names one device's data in full (δ mass on each)
            said.add("delta")
            log.warning("round %d: privacy.delta = %g is at least 1 / %d eligible devices: (ε, δ)-DP then allows "
                        "revealing one device's data outright; set delta well below 1 / population", round_id,
                        cfg.delta, population)
        if z > expected_cohort and "noise" not in said:
            # the mean's noise (std z S / n) outweighs any one clipped update (norm <= S): a fleet
            # this small learns next to nothing at this budget (a helper's 5 devices: z = 19.5)
            said.add("noise")
            log.warning("round %d: noise multiplier z = %.3g over %g expected devices a round: the noise of the "
                        "mean is larger than any one update; expect little learning. More devices a round, "
                        "fewer rounds or a larger target_epsilon lower it", round_id, z, expected_cohort)
