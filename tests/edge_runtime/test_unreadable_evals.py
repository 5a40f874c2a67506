"""An EvalTask the wire refuses (an unsafe model id, a negative round id, an unknown field) was
dropped with a log line and never answered, so the coordinator's evaluation waited for its
deadline (120 s by default) for that device. When its eval id, device id and model version are
valid and name this device, the device now answers with an EvalReport carrying the codec's
reason and, in its detail, the field; a frame that names nobody reliably is still only logged."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import EvalReport, EvalTask, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump, reframed
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


def _eval(model, eval_id: str) -> EvalTask:
    _, manifest, runtime = model
    return EvalTask(eval_id, DEVICE, manifest.model_id, 3, 3, encode_dense(runtime.initial("shared")))


def _reports(agent, coord, payload: bytes) -> list[EvalReport]:
    coord.publish(device_topic(DEVICE, "task"), payload)
    return [m for m in pump(agent, coord) if isinstance(m, EvalReport)]


REFUSED = {  # edit of the EvalTask's body -> the field the refusal must name
    "model_id": lambda body: body.update(model_id="../../etc"),
    "round_id": lambda body: body.update(round_id=-1),
    "surprise": lambda body: body.update(surprise=1),
    "params": lambda body: body.update(params="not bytes"),
}


@pytest.mark.parametrize("field", sorted(REFUSED))
def test_an_eval_the_wire_refuses_is_answered_by_name(model, tmp_path, field):
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    bad = reframed(_eval(model, "e1"), REFUSED[field])
    with pytest.raises(Exception) as refused:  # the oracle: what the codec itself says of the frame
        decode_message(bad)
    (report,) = _reports(agent, coord, bad)
    assert (report.device_id, report.eval_id, report.model_version) == (DEVICE, "e1", 3)
    assert report.reason == refused.value.reason == "malformed" and field in report.detail
    assert report.num_examples == 0 and not report.has_global and not report.has_personal
    # a copy, bad or mended, gets no second answer: the coordinator counted the first
    assert _reports(agent, coord, bad) == []
    assert _reports(agent, coord, encode_message(_eval(model, "e1"))) == []
    (scored,) = _reports(agent, coord, encode_message(_eval(model, "e2")))  # the device still evaluates
    assert scored.reason == "" and scored.num_examples == 8 and scored.has_global


@pytest.mark.parametrize("edit", [
    lambda body: body.update(device_id="devB", round_id=-1),  # another device's
    lambda body: body.update(eval_id=7, round_id=-1),  # no eval id to answer
    lambda body: body.update(model_version=-1),  # a version the report could not carry
])
def test_an_eval_that_names_nobody_reliably_is_only_logged(model, tmp_path, edit):
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    assert _reports(agent, coord, reframed(_eval(model, "e1"), edit)) == []


def test_a_refusal_reaches_a_peer_of_the_previous_schema_only_when_it_has_a_detail():
    """EvalReport.detail is left out of the frame while it is empty, so a report without one
    is the bytes a peer that predates the field reads."""
    plain = EvalReport(DEVICE, "e1", 3, reason="battery_low")
    assert b"detail" not in encode_message(plain)
    assert decode_message(encode_message(EvalReport(DEVICE, "e1", 3, reason="malformed", detail="x"))).detail == "x"
