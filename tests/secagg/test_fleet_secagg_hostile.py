"""Secure rounds end to end in memory against hostile peers: a real Coordinator and real
DeviceAgents over the in-memory broker, one of them modified to send a forged unmask request,
a malformed or small-order key, wrong unmask shares, or share boxes that do not open. Each is
declined or refused by name, the round commits the plain mean of the others (the oracle:
`_expected_mean`, bit for bit in the sum) or fails by name, and a device whose shares open
nowhere sits out the next rounds (coordinator/sidelined.py). Honest rounds:
test_fleet_secagg_rounds.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.edge_runtime.kernel.protocol import Decline
from fedge.edge_runtime.kernel.secagg.messages import EncryptedShares, MaskedInput, UnmaskRequest, UnmaskResponse
from tests.coordinator.fleet import copy_params, make_fleet
from tests.secagg.fleet_round import SETTINGS, _expected_mean, _flat, _run_round


def test_a_forged_overlapping_unmask_request_is_declined_by_name(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), **SETTINGS)
    c = fleet.coordinator
    assert c.begin_round()
    while c.round.machine.stage < 3:  # up to the unmask stage's requests
        fleet.drain()
        c.tick()
        fleet.clock.advance(1.0)
    agent = fleet.agents[0]
    task_id = c.round.ctx.tasks[agent.device_id]
    ids = tuple(sorted(c.round.ctx.tasks))
    agent.secagg.on_message(UnmaskRequest(agent.device_id, c.round.ctx.round_id, task_id, ids, ids[1:2],
                                          agent.secagg.sessions[task_id].model_sha256))
    fleet.drain()
    declines = [m for m in fleet.wire if isinstance(m, Decline)]
    assert [d.reason for d in declines] == ["secagg_sets_overlap"]
    # the coordinator's own request (delivered by that drain) was answered, recorded durably first;
    # any further request is declined by name, from memory and, after a restart, from the record
    assert len(list(agent.secagg.answered_dir.glob(f"round-{c.round.ctx.round_id}-*"))) == 1
    again = UnmaskRequest(agent.device_id, c.round.ctx.round_id, task_id, ids, (),
                          agent.secagg.sessions[task_id].model_sha256)
    agent.secagg.on_message(again)
    agent.secagg.sessions[task_id] = dataclasses.replace(agent.secagg.sessions[task_id], answered=False)
    agent.secagg.on_message(again)  # as if the process had restarted with its keys: the file still says no
    fleet.drain()
    assert [d.reason for d in fleet.wire if isinstance(d, Decline)][1:] == ["secagg_already_answered"] * 2


def test_a_key_directory_with_a_malformed_peer_key_is_declined_not_raised(model, tmp_path):
    from fedge.edge_runtime.kernel.secagg.messages import KeyDirectory, PeerKeys

    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16), **SETTINGS)
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    agent = fleet.agents[0]
    task_id = c.round.ctx.tasks[agent.device_id]
    sealed_keys = KeyDirectory(agent.device_id, 1, task_id, ("dev0", "dev1", "dev2"), 2, 2, 0, ())
    agent.secagg.on_message(sealed_keys)  # no neighbour keys at all: fewer than t, a named decline
    # a low-order X25519 point: the agreement fails inside `cryptography` with a ValueError
    model_sha = agent.secagg.sessions[task_id].model_sha256
    bad = dataclasses.replace(sealed_keys, keys=tuple(PeerKeys(d, bytes(32), bytes(32), model_sha)
                                                      for d in ("dev1", "dev2")))
    agent.secagg.on_message(bad)
    fleet.drain()
    reasons = [m.reason for m in fleet.wire if isinstance(m, Decline) and m.device_id == agent.device_id]
    assert reasons == ["secagg_too_few_neighbours", "secagg_failed"]


# The eight small-order points of Curve25519 as X25519 encodes them (the zero point, the point of
# order 2 and the two of order 8, some in two encodings): an agreement with any is all zeros.
SMALL_ORDER = [bytes(32), (1).to_bytes(32, "little"),
               bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
               bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
               (2**255 - 19 - 1).to_bytes(32, "little"), (2**255 - 19).to_bytes(32, "little"),
               (2**255 - 19 + 1).to_bytes(32, "little")]


@pytest.mark.parametrize("which", ["mask_public", "cipher_public"])
def test_a_device_that_advertises_a_small_order_key_is_left_out_not_followed(model, tmp_path, which):
    """Every neighbour's agreement with such a key fails, and each used to decline the mask stage:
    one device abandoned every secure round it was drawn into, booked against the others. Now the
    coordinator refuses the advertisement (secagg_bad_key) and the round runs without it."""
    from fedge.edge_runtime.kernel.secagg.keys import contributory, generate_keypair

    assert not any(contributory(k) for k in SMALL_ORDER) and contributory(generate_keypair().public)
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18, 14), min_reports=3, **SETTINGS)
    evil = fleet.agents[0].secagg
    real = evil._advertisement
    evil._advertisement = lambda s, task_id: dataclasses.replace(real(s, task_id), **{which: bytes(32)})
    agents = list(fleet.agents)
    old = copy_params(fleet.coordinator.state.params)
    record = _run_round(fleet)
    assert record.committed and record.reports == 5, record.why
    assert fleet.coordinator.rejections["secagg_bad_key"] == 1 and not fleet.coordinator.declines
    fleet.agents = agents
    expected = _expected_mean(fleet, {a.device_id for a in agents[1:]})
    np.testing.assert_allclose(_flat(fleet.coordinator.state.params) - _flat(old), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("drop", [False, True])
def test_a_holder_that_answers_the_unmask_with_wrong_shares_is_found_and_left_out(model, tmp_path, drop):
    """Any field element passes an UnmaskResponse's checks. Without a dropout the wrong values
    were used as self-mask shares and a wrong sum was committed; with one, the dropped device's
    mask key failed its check and the round was abandoned. Now each secret is checked with a
    share past t, the holder whose shares explain the failures is named (secagg_bad_shares) and
    left out, and the sum is unmasked from the others' shares: the plain mean, bit for bit.
    Eight devices (k = 7, t = 4): at six (h - t = 2) two colluders could leave an honest holder
    off a moved self seed alike, and without a dropout the round is abandoned, no one named
    (recovery.LIARS; test_raw_clients.py)."""
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18, 14, 22, 10), min_reports=3, **SETTINGS)
    evil = fleet.agents[0].secagg
    real_publish = evil.publish
    evil.publish = lambda msg: real_publish(dataclasses.replace(msg, values=bytes(len(msg.values)))
                                            if isinstance(msg, UnmaskResponse) else msg)
    agents = list(fleet.agents)
    old = copy_params(fleet.coordinator.state.params)
    gone = "dev5" if drop else ""
    record = _run_round(fleet, drop_at_stage=2, drop=gone)
    assert record.committed, record.why
    assert fleet.coordinator.rejections["secagg_bad_shares"] == 1
    # named, not sidelined: a dealer that dealt it wrong shares would look the same
    assert "dev0" in fleet.coordinator.eligible_devices()
    fleet.agents = agents
    survivors = {a.device_id for a in agents} - {gone}
    assert record.reports == len(survivors)
    expected = _expected_mean(fleet, survivors)
    np.testing.assert_allclose(_flat(fleet.coordinator.state.params) - _flat(old), expected, rtol=0, atol=1e-6)


def _corrupt_boxes(agent, which):
    """agent's EncryptedShares with the boxes for the peers `which(peers)` names replaced by random
    bytes of the same length (what a modified device, or a relay, could send)."""
    import os

    from fedge.edge_runtime.kernel.secagg.messages import sealed_share_bytes

    real_publish = agent.secagg.publish

    def publish(msg):
        if isinstance(msg, EncryptedShares):
            s = next(iter(agent.secagg.sessions.values()))
            size = sealed_share_bytes(s.packing)
            peers = sorted(s.peers)
            boxes = [msg.boxes[i * size:(i + 1) * size] for i in range(len(peers))]
            bad = which(peers)
            msg = dataclasses.replace(msg, boxes=b"".join(os.urandom(size) if p in bad else b
                                                          for p, b in zip(peers, boxes)))
        real_publish(msg)

    agent.secagg.publish = publish


def test_a_share_that_does_not_open_is_reported_and_the_round_goes_on(model, tmp_path):
    """Two boxes from dev0 (to dev3 and dev4) are garbage: each used to decline the whole mask
    stage. Now each holds no share of dev0, still masks with it (their pair masks cancel), says
    so in its MaskedInput, and the round commits the plain mean of all six from the others'
    shares of dev0. Reports that leave t holders blame no one: two liars cannot sideline it."""
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18, 14), min_reports=3, **SETTINGS)
    _corrupt_boxes(fleet.agents[0], lambda peers: {"dev3", "dev4"})
    agents, old = list(fleet.agents), copy_params(fleet.coordinator.state.params)
    record = _run_round(fleet)
    assert record.committed and record.reports == 6, record.why
    assert [m.unopened for m in fleet.wire if isinstance(m, MaskedInput) and m.unopened] == [("dev0",)] * 2
    assert not fleet.coordinator.declines and not fleet.coordinator.rejections
    assert "dev0" in fleet.coordinator.eligible_devices()
    fleet.agents = agents
    expected = _expected_mean(fleet, {a.device_id for a in agents})
    np.testing.assert_allclose(_flat(fleet.coordinator.state.params) - _flat(old), expected, rtol=0, atol=1e-6)


def test_a_device_whose_shares_open_nowhere_spoils_one_round_then_sits_out(model, tmp_path):
    """Random bytes to every neighbour: no one holds dev0's shares, so the round cannot be
    unmasked (by name), and dev0 is blamed by the five who could not open them. Before, each of
    them declined and the round was abandoned with the declines on the honest devices, every
    round dev0 was drawn into. Now dev0 sits out the next rounds (coordinator/sidelined.py)."""
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18, 14), min_reports=3, abandon_backoff_s=0.0,
                       **SETTINGS)
    _corrupt_boxes(fleet.agents[0], set)  # set(peers): every box
    c = fleet.coordinator
    first = _run_round(fleet)
    assert not first.committed and "0 self shares of dev0" in first.why
    assert c.rejections["secagg_bad_shares"] == 1 and not c.declines
    assert "dev0" not in c.eligible_devices()
    fleet.clock.advance(60)
    agents, old = list(fleet.agents), copy_params(c.state.params)
    second = _run_round(fleet)
    assert second.committed and second.reports == 5, second.why
    fleet.agents = agents
    expected = _expected_mean(fleet, {a.device_id for a in agents[1:]})
    np.testing.assert_allclose(_flat(c.state.params) - _flat(old), expected, rtol=0, atol=1e-6)
    fleet.clock.advance(600)
    assert "dev0" in c.eligible_devices()  # ten minutes after a first offence


def test_sidelining_doubles_with_each_offence_and_stops_at_a_day():
    from fedge.coordinator.sidelined import FIRST_S, MAX_S, Sidelined

    s = Sidelined()
    for n in range(1, 12):
        s.offence("d", 0.0)
        assert s.until["d"] == min(MAX_S, FIRST_S * 2 ** (n - 1))
    assert s.keep(["d", "e"], MAX_S - 1) == ["e"] and s.keep(["d", "e"], MAX_S) == ["d", "e"]
