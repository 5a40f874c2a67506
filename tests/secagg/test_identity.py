"""Signed key advertisements: a neighbour's round keys count only when signed by its
provisioned Ed25519 identity, so a coordinator that substitutes keys is caught by name."""

import dataclasses

import numpy as np
import pytest

from fedge.edge_runtime.kernel.secagg import identity
from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.keys import generate_keypair
from tests.coordinator.fleet import copy_params, make_fleet
from tests.secagg.fleet_round import SETTINGS, _expected_mean, _flat, _run_round

MODEL = "ab" * 32


def _signed(s: sess.DeviceSession, private: bytes) -> sess.Advertised:
    a = s.advertised
    sig = identity.sign(private, identity.transcript(s.round_id, s.device_id, a.cipher_public, a.mask_public,
                                                     a.model_sha256))
    return dataclasses.replace(a, signature=sig)


def _cohort():
    ids = ("a", "b", "c")
    keys = {d: identity.generate_identity() for d in ids}
    sessions = {d: sess.start(d, 4, MODEL) for d in ids}
    adv = {d: _signed(sessions[d], keys[d][0]) for d in ids}
    return ids, sessions, adv, {d: pub for d, (_, pub) in keys.items()}


def test_the_signature_binds_round_device_keys_and_model():
    private, public = identity.generate_identity()
    k1, k2 = generate_keypair().public, generate_keypair().public
    msg = identity.transcript(4, "a", k1, k2, MODEL)
    sig = identity.sign(private, msg)
    assert len(sig) == identity.SIGNATURE_BYTES and identity.verify(public, sig, msg)
    for other in (identity.transcript(5, "a", k1, k2, MODEL), identity.transcript(4, "b", k1, k2, MODEL),
                  identity.transcript(4, "a", k2, k1, MODEL), identity.transcript(4, "a", k1, k2, "cd" * 32)):
        assert not identity.verify(public, sig, other)
    assert not identity.verify(identity.generate_identity()[1], sig, msg)
    assert not identity.verify(public, b"", msg)


def test_signed_neighbours_are_shared_with():
    ids, sessions, adv, directory = _cohort()
    _, boxes = sess.shares_for_neighbours(sessions["a"], ids, ("b", "c"), 2, adv, directory)
    assert set(boxes) == {"b", "c"}


@pytest.mark.parametrize("forge", ["substituted_key", "unsigned", "unknown_device"])
def test_a_forged_or_unsigned_key_is_declined_by_name(forge):
    ids, sessions, adv, directory = _cohort()
    if forge == "substituted_key":  # the coordinator relays its own mask key for c
        adv["c"] = dataclasses.replace(adv["c"], mask_public=generate_keypair().public)
    elif forge == "unsigned":
        adv["c"] = dataclasses.replace(adv["c"], signature=b"")
    else:
        directory = {d: k for d, k in directory.items() if d != "c"}
    with pytest.raises(sess.SecAggDecline) as exc:
        sess.shares_for_neighbours(sessions["a"], ids, ("b", "c"), 2, adv, directory)
    assert exc.value.reason == sess.BAD_SIGNATURE


def _with_identities(fleet):
    keys = {a.device_id: identity.generate_identity() for a in fleet.agents}
    directory = {d: pub for d, (_, pub) in keys.items()}
    for a in fleet.agents:
        a.secagg.identity_private, a.secagg.directory = keys[a.device_id][0], directory
    return directory


def test_a_fleet_with_identities_commits(model, tmp_path):  # noqa: F811
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 14), **SETTINGS)
    _with_identities(fleet)
    old = copy_params(fleet.coordinator.state.params)
    record = _run_round(fleet)
    assert record.committed, record.why
    survivors = {a.device_id for a in fleet.agents}
    np.testing.assert_allclose(_flat(fleet.coordinator.state.params) - _flat(old), _expected_mean(fleet, survivors),
                               rtol=0, atol=1e-6)


def test_a_coordinator_that_substitutes_a_key_gets_named_declines(model, tmp_path, monkeypatch):  # noqa: F811
    from fedge.coordinator.secagg import round_state

    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 14), **SETTINGS)
    _with_identities(fleet)
    accept = round_state.SecAggRound.accept

    def substituting(self, stage, reply):  # the coordinator keeps its own mask key for dev1
        if reply.__class__.__name__ == "KeyAdvertisement" and reply.device_id == "dev1":
            reply = dataclasses.replace(reply, mask_public=generate_keypair().public)
        return accept(self, stage, reply)

    monkeypatch.setattr(round_state.SecAggRound, "accept", substituting)
    record = _run_round(fleet)
    assert not record.committed
    assert set(record.declines.values()) == {sess.BAD_SIGNATURE}
    assert set(record.declines) == {"dev0", "dev2", "dev3"}  # every neighbour of dev1 (complete graph)
