"""Why an incomplete evaluation closed, as its log line says (coordinator/evaluation.py).

A walk saw "evaluation of model v1 ... (closed at its deadline)" 0.2 s after the coordinator
asked, with a 120 s deadline: the next commit had replaced it. Each cause is driven here on
Evaluations itself, with fakes for what it publishes to and stores in."""

from __future__ import annotations

import logging

import numpy as np

from fedge.coordinator.evaluation import EvalConfig, Evaluations


class _Outbound:
    def encode(self, message) -> bytes:
        return b"task"

    def send(self, topic: str, payload: bytes) -> None:
        pass


class _Store:
    def __init__(self):
        self.records: list[dict] = []

    def add_evaluation(self, round_id: int, record: dict) -> None:
        self.records.append(record)


class _Metrics:
    def closed(self, record) -> None:
        pass


def _evaluations(store) -> Evaluations:
    return Evaluations(EvalConfig(every_rounds=1, devices=0, deadline_s=120.0), _Outbound(), store, _Metrics(),
                       model_id="m" * 24, seed=0, max_examples=1000)


def _closing_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "devices, " in r.getMessage()]


def test_an_evaluation_a_newer_commit_replaces_says_so_not_its_deadline(caplog):
    store = _Store()
    evaluations = _evaluations(store)
    params = {"w": np.zeros(3, np.float32)}
    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        evaluations.after_commit(1, 1, params, ["dev0", "dev1"], now=0.0)
        evaluations.after_commit(2, 2, params, ["dev0", "dev1"], now=0.2)  # nobody answered v1 yet
        assert evaluations.tick(119.0) is None
        assert evaluations.tick(120.2) is not None  # v2's deadline
    replaced, deadline = _closing_lines(caplog)
    assert replaced.startswith("evaluation of model v1 (round 1): 0/2 devices") and replaced.endswith(
        "(replaced by model v2)"), replaced
    assert deadline.startswith("evaluation of model v2 (round 2): 0/2 devices") and deadline.endswith(
        "(closed at its deadline)"), deadline
    assert [(r["model_version"], r["complete"]) for r in store.records] == [(1, False), (2, False)]
