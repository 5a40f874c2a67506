"""The coordinator's metrics at the points the mutation audit found unguarded
(benchmarks/results/2026-12-06-mutation9-secagg): decline labels at their cut and their
alphabet, a known label past the cap, the fetch refusals counted from zero, and what one closed
round and one evaluation leave in the exposition text. Read back as a scraper would:
prometheus_client.parser over generate_latest."""

from __future__ import annotations

import math
import re
import string

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedge.coordinator.artifacts import FetchRefused
from fedge.coordinator.evaluation import EvalRecord
from fedge.coordinator.metrics import CoordinatorMetrics, EvalMetrics

LABEL = re.compile(r"[a-zA-Z0-9_:.-]+")  # the README's sanitised alphabet


def _samples(registry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _declines(m: CoordinatorMetrics) -> dict[str, float]:
    return {dict(labels)["reason"]: v for (name, labels), v in _samples(m.registry).items()
            if name == "fedge_declines_total"}


def test_a_decline_label_is_cut_at_48_characters_and_keeps_only_its_alphabet():
    m = CoordinatorMetrics()
    long = "x" * 47 + "yz" + "w" * 10
    odd = 'say "no"\\' + string.punctuation + "\n\tend"
    for reason in (long, odd, ""):
        m.declined(reason)
    got = _declines(m)
    want_odd = "".join(c if LABEL.fullmatch(c) else "_" for c in odd)[:48]  # the rule, character by character
    assert got == {long[:48]: 1, want_odd: 1, "unspecified": 1}
    assert all(LABEL.fullmatch(label) and len(label) <= 48 for label in got)


def test_a_known_reason_keeps_its_label_after_the_cap_is_reached():
    m = CoordinatorMetrics()
    m.declined("battery_low")
    for i in range(100):
        m.declined(f"made_up_{i}")
    m.declined("battery_low")
    got = _declines(m)
    assert got["battery_low"] == 2 and got["other"] == 100 - 63 and len(got) == 65


def test_every_fetch_refusal_is_counted_from_zero():
    reasons, todo = set(), [FetchRefused]
    while todo:  # the class tree, walked here on its own
        cls = todo.pop()
        reasons.add(cls.reason)
        todo.extend(cls.__subclasses__())
    s = _samples(CoordinatorMetrics().registry)
    assert len(reasons) >= 5
    assert all(s[("fedge_rejections_total", (("reason", r),))] == 0 for r in reasons)


def test_one_closed_round_sets_each_series():
    m = CoordinatorMetrics()
    m.round_begun(4)
    m.round_closed(True, participants=3, seconds=-2.0, version=7, train_loss=0.0)  # a clock stepped back
    s = _samples(m.registry)
    assert s[("fedge_round_participants", ())] == 3 and s[("fedge_participants_total", ())] == 3
    assert s[("fedge_round_train_loss", ())] == 0.0  # a loss of 0 is a loss, not "none reported"
    assert s[("fedge_round_duration_seconds_sum", ())] == 0.0
    assert s[("fedge_round_duration_seconds_bucket", (("le", "1.0"),))] == 1
    m.round_closed(False, participants=0, seconds=5.0, version=7)
    s = _samples(m.registry)
    assert s[("fedge_round_participants", ())] == 0 and s[("fedge_round_train_loss", ())] == 0.0


def test_one_evaluation_sets_each_series():
    m = CoordinatorMetrics()
    ev = EvalMetrics(m.registry)
    ev.closed(EvalRecord(round_id=2, model_version=3, asked=9, reported=4, declined={"busy": 2, "no_data": 3},
                         examples=40, loss_global=0.5, accuracy_global=0.75, examples_personal=0, loss_personal=None,
                         accuracy_personal=None, bytes_eval_up=11, bytes_eval_down=222, complete=False))
    s = _samples(m.registry)
    assert s[("fedge_eval_devices", (("outcome", "declined"),))] == 5  # devices, not reasons
    assert s[("fedge_eval_bytes_total", (("direction", "up"),))] == 11
    assert s[("fedge_eval_bytes_total", (("direction", "down"),))] == 222
    assert s[("fedge_eval_accuracy", (("model", "global"),))] == 0.75
    assert math.isnan(s[("fedge_eval_accuracy", (("model", "personal"),))])
    assert s[("fedge_evaluations_total", (("outcome", "partial"),))] == 1


def test_every_reason_the_secure_round_refuses_a_reply_by_starts_at_zero():
    """The metrics docstring's promise for the secure round's refusals, whose reasons are strings
    of round_state.accept and the advertisement checks it calls (_refusal, _unvouched), and of the
    sharded round's accept (which adds secagg_group_out), rather than UpdateRejected classes.
    Oracle: the reasons read from those functions' own return statements (ast), so a new one
    cannot be added unnamed."""
    import ast
    import inspect
    import textwrap

    from fedge.coordinator.secagg import round_state
    from fedge.coordinator.sharding import secure

    returned, literal = set(), set()
    state = round_state.SecAggRound
    for module, accept in ((round_state, state.accept), (round_state, state._refusal), (round_state, state._unvouched),
                           (secure, secure.GroupedSecAgg.accept)):
        tree = ast.parse(textwrap.dedent(inspect.getsource(accept)))
        returned |= {getattr(module, name.id) for node in ast.walk(tree) if isinstance(node, ast.Return) and node.value
                     for name in ast.walk(node.value)  # `return None if ok else BAD_SIGNATURE` too
                     if isinstance(name, ast.Name) and isinstance(getattr(module, name.id, None), str)}
        literal |= {node.value.value for node in ast.walk(tree) if isinstance(node, ast.Return)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    assert len(returned) >= 8 and not literal  # every reason through a named constant
    zeros = {dict(labels)["reason"] for (name, labels), v in _samples(CoordinatorMetrics().registry).items()
             if name == "fedge_rejections_total" and v == 0}
    assert returned <= zeros
