"""The device task's transition table (edge_runtime/task.py): states, and the actions it returns."""

from __future__ import annotations

import itertools

import pytest

from fedge.edge_runtime.task import (
    TERMINAL,
    TRANSITIONS,
    Acked,
    Failed,
    FetchInputs,
    InputsReady,
    InvalidTransition,
    Received,
    Refused,
    SendDecline,
    SendUpdate,
    TaskState,
    Train,
    Trained,
    advance,
    on_event,
)

S = TaskState
# Written out from the diagram in edge_runtime/task.py, independently of TRANSITIONS.
EXPECTED = {
    (S.IDLE, "accept"): S.ELIGIBLE,
    (S.IDLE, "decline"): S.DECLINED,
    (S.ELIGIBLE, "start"): S.TRAINING,
    (S.ELIGIBLE, "decline"): S.DECLINED,
    (S.TRAINING, "decline"): S.DECLINED,
    (S.TRAINING, "abort"): S.ABORTED,
    (S.TRAINING, "trained"): S.UPLOADING,
    (S.UPLOADING, "ack"): S.ACKNOWLEDGED,
    (S.UPLOADING, "rejected"): S.REJECTED,
}
EVENTS = ("accept", "start", "task", "decline", "abort", "trained", "ack", "rejected", "bogus")


@pytest.mark.parametrize("state, event", list(itertools.product(TaskState, EVENTS)))
def test_every_transition(state, event):
    if (state, event) in EXPECTED:
        assert advance(state, event) == EXPECTED[(state, event)]
    else:
        with pytest.raises(InvalidTransition) as info:
            advance(state, event)
        assert isinstance(info.value, ValueError)
        assert state.value in str(info.value) and event in str(info.value)


def test_table_matches_the_diagram_and_terminal_states_are_final():
    assert TRANSITIONS == EXPECTED
    assert TERMINAL == {S.ACKNOWLEDGED, S.REJECTED, S.DECLINED, S.ABORTED}
    assert not any(state in TERMINAL for state, _ in TRANSITIONS)


def test_happy_path():
    state = S.IDLE
    for event in ("accept", "start", "trained", "ack"):
        state = advance(state, event)
    assert state == S.ACKNOWLEDGED


def test_happy_path_returns_the_actions_the_agent_runs():
    state, actions = on_event(S.IDLE, Received("tiny_model-1.0"))
    assert (state, actions) == (S.ELIGIBLE, (FetchInputs(),))
    state, actions = on_event(state, InputsReady(now=12.0, received_at=10.0, deadline_s=30.0))
    assert (state, actions) == (S.TRAINING, (Train(deadline_at=40.0),))
    state, actions = on_event(state, Trained("u1"))
    assert (state, actions) == (S.UPLOADING, (SendUpdate("u1"),))
    assert on_event(state, Acked(True)) == (S.ACKNOWLEDGED, ())
    assert on_event(state, Acked(False)) == (S.REJECTED, ())


@pytest.mark.parametrize("model_id", ["../etc", "", ".hidden", "a/b", "x" * 129, "sp ace"])
def test_an_unsafe_model_id_is_declined_before_anything_is_fetched(model_id):
    state, (action,) = on_event(S.IDLE, Received(model_id))
    assert state == S.DECLINED and isinstance(action, SendDecline)
    assert (action.reason, action.stage) == ("bad_model_id", "before")


@pytest.mark.parametrize("waited, declined", [(0.0, False), (29.9, False), (30.0, True), (45.0, True)])
def test_inputs_that_come_at_or_past_the_deadline_are_declined_untrained(waited, declined):
    state, (action,) = on_event(S.ELIGIBLE, InputsReady(now=100.0 + waited, received_at=100.0, deadline_s=30.0))
    if declined:
        assert state == S.DECLINED and isinstance(action, SendDecline)
        assert (action.reason, action.stage) == ("deadline_passed", "before")
        assert f"{waited:.1f} s after" in action.detail
    else:
        assert (state, action) == (S.TRAINING, Train(130.0))


def test_refusals_and_failures_answer_with_a_decline():
    assert on_event(S.ELIGIBLE, Refused("artifact_fetch_timeout", "gone")) == (
        S.DECLINED, (SendDecline("artifact_fetch_timeout", "gone", "before"),))
    assert on_event(S.TRAINING, Failed("aborted:battery_low", "after 3 steps", "during", aborted=True)) == (
        S.ABORTED, (SendDecline("aborted:battery_low", "after 3 steps", "during"),))
    assert on_event(S.TRAINING, Failed("payload_too_large", "big", "during", aborted=False)) == (
        S.DECLINED, (SendDecline("payload_too_large", "big", "during"),))


@pytest.mark.parametrize("state", [S.IDLE, S.UPLOADING] + sorted(TERMINAL))
def test_inputs_for_a_task_not_waiting_for_them_are_refused_by_the_table(state):
    with pytest.raises(InvalidTransition):  # e.g. a second copy of its params: it never trains twice
        on_event(state, InputsReady(0.0, 0.0, 10.0))
