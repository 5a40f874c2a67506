"""A secure round's four stages attacked out of turn by a client fedge did not write (RawClient):
each stage's reply twice with the same bytes and with other bytes, another stage's message
before and after its own, a decline after its reply and a decline twice, a reply for a round
already committed, an earlier round's messages replayed with the round changed, and messages
from a device the round never asked. Each is refused by name (exported and logged), the first
reply is the one that counts, and the round commits the exact field sum of the inputs that
counted (the oracle: their plain integer sum mod 2^m); no honest device sits out."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.flood import worth_logging
from fedge.edge_runtime.kernel.protocol import Decline, FetchRequest, TrainTask, device_topic
from fedge.edge_runtime.kernel.secagg.messages import (
    EncryptedShares,
    KeyAdvertisement,
    MaskedInput,
    SecAggTask,
    UnmaskResponse,
)
from tests.coordinator.phase_attack import exported
from tests.secagg.fleet_round import SECURE, _run_round
from tests.secagg.test_raw_clients import HONEST, _check_exact, _fleet, sums  # noqa: F401 - sums: a fixture
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


def _twice(other):
    """Its reply, then the same message again: as it was (other=None) or changed by `other`."""
    return lambda client, reply: [reply, reply if other is None else other(reply)]


def _strays(client, reply):
    """A message of every other stage, with its own ids, then its reply."""
    s, n = client.session, 1
    mine = dict(device_id=client.device_id, round_id=reply.round_id, task_id=client.task_id)
    every = [KeyAdvertisement(**mine, cipher_public=s.cipher.public, mask_public=s.mask.public,
                              model_sha256=s.model_sha256),
             EncryptedShares(**mine, boxes=b""),
             MaskedInput(**mine, length=n, field_bits=16, data=b"\0\0"),
             UnmaskResponse(**mine, values=b"")]
    return [m for m in every if type(m) is not type(reply)] + [reply]


def _decline(client, reply, reason="secagg_failed"):
    return Decline(client.device_id, reply.round_id, client.task_id, reason, "", "during")


STAGES = ("advertise", "share", "mask", "unmask")


def _changed(reply):
    """The same reply with other bytes (KeyAdvertisement: other keys)."""
    field = {"KeyAdvertisement": "cipher_public", "EncryptedShares": "boxes", "MaskedInput": "data",
             "UnmaskResponse": "values"}[type(reply).__name__]
    return dataclasses.replace(reply, **{field: _flip(getattr(reply, field))})


CASES = {  # name: (stage -> tamper, rejection: count, is raw0 in the sum)
    "every_stage_twice_same": (dict.fromkeys(STAGES, _twice(None)), {"stale_round": 4}, True),
    "every_stage_twice_other": (dict.fromkeys(STAGES, _twice(_changed)), {"stale_round": 4}, True),
    "every_other_stage_at_each": (dict.fromkeys(STAGES, _strays), {"secagg_wrong_stage": 12}, True),
    # a decline of the stage it answered: its reply stands, the decline is refused
    "decline_after_mask": ({"mask": lambda c, r: [r, _decline(c, r)]}, {"stale_round": 1}, True),
    # declined at the share stage: counted once (then a dropout), the second refused
    "decline_twice": ({"share": lambda c, r: [_decline(c, r), _decline(c, r, "other")]}, {"duplicate": 1}, False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stage_answered_twice_or_out_of_turn_counts_the_first_answer_once(model, tmp_path, sums, caplog,  # noqa: F811
                                                                             case):
    caplog.set_level(logging.INFO, logger="fedge.coordinator")
    tamper, rejections, summed = CASES[case]
    fleet, raws = _fleet(model, tmp_path, tamper)
    record = _run_round(fleet)
    c = fleet.coordinator
    assert dict(c.rejections) == rejections
    for reason, n in rejections.items():
        assert exported(c, reason) == n
        logged = sum(f"rejected message from raw0: {reason} " in r.getMessage() for r in caplog.records)
        assert logged == sum(worth_logging(i) for i in range(1, n + 1))  # a flood is logged sparsely
    assert sum(c.declines.values()) == (1 if case == "decline_twice" else 0), dict(c.declines)
    _check_exact(fleet, raws, record, sums, HONEST | ({"raw0"} if summed else set()))
    assert HONEST | {"raw0"} <= set(c.eligible_devices())


def test_replies_for_a_committed_round_an_earlier_round_replayed_and_a_device_never_asked(model, tmp_path,
                                                                                          sums):  # noqa: F811
    """Round 1 commits; raw0 then sends its last unmask answer again (the round is closed). In
    round 2 it first replays round 1's key advertisement with the round changed, then also with
    its new task id: the keys name round 1's model, which is not round 2's. A device the rounds
    never asked sends a reply of every stage. Round 2 commits raw0's honest answers exactly."""
    kept = {}

    def replay(client, reply):
        if "advert" not in kept:
            kept["advert"] = reply
            return [reply]
        old = kept["advert"]
        return [dataclasses.replace(old, round_id=reply.round_id),
                dataclasses.replace(old, round_id=reply.round_id, task_id=reply.task_id), reply]

    def keep_answer(client, reply):
        kept["answer"] = reply
        return [reply]

    fleet, raws = _fleet(model, tmp_path, {"advertise": replay, "unmask": keep_answer})
    c = fleet.coordinator
    _check_exact(fleet, raws, _run_round(fleet), sums, HONEST | {"raw0"})
    raws[0].send(kept["answer"])
    fleet.drain()
    assert dict(c.rejections) == {"stale_round": 1}
    stranger = fleet.broker.connect("stranger")
    assert c.begin_round()
    fleet.drain()  # raw0's replays: round 1's task, then round 1's model
    assert dict(c.rejections) == {"stale_round": 1, "unexpected_message": 1, "secagg_model_mismatch": 1}
    for message in _strays(raws[0], kept["answer"]):  # one of every stage, on the stranger's topic
        stranger.publish(device_topic("stranger", "update"), encode_message(
            dataclasses.replace(message, device_id="stranger", round_id=c.round.ctx.round_id)))
    fleet.drain()
    assert dict(c.rejections) == {"stale_round": 1, "unexpected_message": 5, "secagg_model_mismatch": 1}
    assert exported(c, "secagg_model_mismatch") == 1 and exported(c, "unexpected_message") == 5
    record = None
    for _ in range(40):
        fleet.drain()
        if (record := c.tick()) is not None:
            break
        fleet.clock.advance(1.0 if c.round.machine.stage_full else SECURE.stage_deadline_s + 1)
    _check_exact(fleet, raws, record, sums, HONEST | {"raw0"})
    assert HONEST | {"raw0"} <= set(c.eligible_devices())


def test_a_fetch_for_a_secure_task_is_refused_at_every_stage(model, tmp_path, sums):  # noqa: F811
    """A secure round's requests go out once per stage, params inline (shell.resend sends none):
    a FetchRequest naming the device's own task, at any stage, is refused as unknown_task and no
    plain TrainTask goes back (it once did: the round's params under the config's compression,
    for a stage long past). The round commits raw0's honest answers exactly."""
    def fetch_then_reply(client, reply):
        model_id = next(m for m in client.seen if isinstance(m, SecAggTask)).task.model_id
        client.t.publish(device_topic(client.device_id, "fetch"),
                         encode_message(FetchRequest(client.device_id, model_id, task_id=client.task_id)))
        return [reply]

    fleet, raws = _fleet(model, tmp_path, dict.fromkeys(STAGES, fetch_then_reply))
    record = _run_round(fleet)
    c = fleet.coordinator
    assert dict(c.rejections) == {"unknown_task": 4} and exported(c, "unknown_task") == 4
    assert not any(isinstance(m, TrainTask) for m in raws[0].seen), [type(m).__name__ for m in raws[0].seen]
    _check_exact(fleet, raws, record, sums, HONEST | {"raw0"})


def test_one_device_claiming_it_could_not_open_an_honest_share_sidelines_no_one(model, tmp_path, sums):  # noqa: F811
    """A cohort of three (k = 2, t = 2): raw0 says in its MaskedInput that it could not open
    dev0's share (`unopened`), which it did open. dev0's seed then has one share of the two it
    needs, so the round cannot be unmasked, and dev0 was blamed and sidelined on raw0's word
    alone (holders - reports < t held for one report, as h = t). A blame now needs more than
    recovery.LIARS reports, as a dealer's naming does: the round is abandoned by name, no one sits
    out, and the next round, raw0 honest, commits the exact sum."""
    lie = {"mask": lambda c, r: [dataclasses.replace(r, unopened=("dev0",))]}
    fleet, raws = _fleet(model, tmp_path, lie, sizes=(12, 20), min_reports=2, abandon_backoff_s=0.0)
    c = fleet.coordinator
    record = _run_round(fleet)
    assert not record.committed and "self shares of dev0" in record.why, record.why
    assert {"dev0", "dev1", "raw0"} <= set(c.eligible_devices()), dict(c.rejections)
    raws[0].tamper = {}
    _check_exact(fleet, raws, _run_round(fleet), sums, {"dev0", "dev1", "raw0"})
