"""What differs between a plain and a secure round, behind one interface, so the server runs
either without branching: the round's stages and limits, how a stage's requests go out, and
what the strategy gets at the end.

    plan(wanted, quorum)             -> (stages, limits) for rounds.start
    send(rnd, stage, devices, now)   the stage's requests
    resend(rnd, device, now)         a selected device that is silent checked in: its request again
    owns(report, channel)            a reply the shell admits (admit(rnd, reply, sender, size))
    selectable(devices)              the eligible devices a round may select
    aggregate_input(rnd, population) -> AggregateInput, or a str: why the round cannot close
"""

from __future__ import annotations

from .config import CoordinatorConfig
from .outbound import Outbound
from .records import OpenRound
from .rounds import SYNC, Limits
from .secagg.shell import SecAggShell
from .strategies import AggregateInput


class SyncShell:
    secure = False
    unlisted: frozenset[str] = frozenset()  # no identity directory: selectable leaves no device out

    def __init__(self, config: CoordinatorConfig, outbound: Outbound):
        self.config = config
        self.outbound = outbound

    def plan(self, wanted: int, quorum: int):
        return SYNC, (Limits(wanted, quorum, self.config.round_deadline_s),)

    def send(self, rnd: OpenRound, stage: str, devices: tuple[str, ...], now: float) -> None:
        if stage != SYNC[0].name:
            raise ValueError(f"no sender for stage {stage!r}")
        for device_id in devices:
            self.outbound.task(rnd, device_id, now)

    def resend(self, rnd: OpenRound, device_id: str, now: float) -> None:
        self.outbound.task(rnd, device_id, now)  # it declines if it cannot train

    def owns(self, report, channel: str) -> bool:
        return False  # Updates go through admission.py

    def selectable(self, devices: list[str]) -> list[str]:
        return devices  # only a secure round's identity directory leaves devices out (secagg/shell.py)

    def aggregate_input(self, rnd: OpenRound, population: int) -> AggregateInput | str:
        return rnd.aggregate_input(population)


def make_shell(config: CoordinatorConfig, outbound: Outbound, shapes: dict[str, tuple[int, ...]], store):
    if config.secure_aggregation.enabled:
        return SecAggShell(config, outbound, shapes, store)
    return SyncShell(config, outbound)
