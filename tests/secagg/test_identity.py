"""Signed key advertisements: a neighbour's round keys count only when signed by its
provisioned Ed25519 identity, so a coordinator that substitutes keys is caught by name. With
the fleet's directory ([coordinator.secure_aggregation] directory_file) the coordinator refuses
an advertisement the directory does not verify, so one bad signer no longer stalls its
neighbours: it is left out of the cohort and the round commits with the others."""

import dataclasses
import logging
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.coordinator.secagg.config import IdentityDirectoryRefused, identities_of
from fedge.coordinator.secagg.round_state import NO_IDENTITY, SecAggRound
from fedge.coordinator.secagg.stages import ADVERTISE
from fedge.coordinator.service import load_service_config
from fedge.edge_runtime.kernel.codec import decode_message
from fedge.edge_runtime.kernel.protocol import Pace
from fedge.edge_runtime.kernel.secagg import identity
from fedge.edge_runtime.kernel.secagg import session as sess
from fedge.edge_runtime.kernel.secagg.identity_files import load_directory
from fedge.edge_runtime.kernel.secagg.keys import generate_keypair
from fedge.edge_runtime.kernel.secagg.messages import SIGNATURE_BYTES, KeyAdvertisement, KeyDirectory, SecAggSpec
from tests.coordinator.fleet import copy_params, make_fleet
from tests.coordinator.phase_attack import exported
from tests.secagg.fleet_round import SECURE, SETTINGS, _expected_mean, _flat, _run_round, hand_out, provision

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
    assert len(sig) == SIGNATURE_BYTES and identity.verify(public, sig, msg)
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


def _with_identities(fleet, folder):
    privates, path = provision([a.device_id for a in fleet.agents], folder)
    hand_out(fleet, privates, load_directory(path))


def test_a_fleet_with_identities_commits(model, tmp_path):  # noqa: F811
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 14), **SETTINGS)
    _with_identities(fleet, tmp_path)
    old = copy_params(fleet.coordinator.state.params)
    record = _run_round(fleet)
    assert record.committed, record.why
    survivors = {a.device_id for a in fleet.agents}
    np.testing.assert_allclose(_flat(fleet.coordinator.state.params) - _flat(old), _expected_mean(fleet, survivors),
                               rtol=0, atol=1e-6)


def test_a_coordinator_that_substitutes_a_key_gets_named_declines(model, tmp_path, monkeypatch):  # noqa: F811
    from fedge.coordinator.secagg import round_state

    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 14), **SETTINGS)
    _with_identities(fleet, tmp_path)
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


# ---------------------------------------------------------------- the coordinator checks too


def _raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _advert(device_id: str, key: Ed25519PrivateKey | None, round_id: int = 4, signed_round: int = 4,
            swap_mask: bool = False) -> KeyAdvertisement:
    """A KeyAdvertisement signed with `key` (cryptography's Ed25519, not fedge's wrapper) over the
    transcript of `signed_round`; swap_mask: its mask key replaced after signing."""
    cipher, mask = generate_keypair().public, generate_keypair().public
    signature = b"" if key is None else key.sign(identity.transcript(signed_round, device_id, cipher, mask, MODEL))
    if swap_mask:
        mask = generate_keypair().public
    return KeyAdvertisement(device_id, round_id, f"task-{device_id}", cipher, mask, MODEL, signature)


def _state(identities) -> SecAggRound:
    return SecAggRound(4, SecAggSpec(bits=16, field_bits=20, clip_range=0.5), MODEL, 0, {"w": (2,)}, None,
                       identities=identities)


def test_accept_takes_only_advertisements_the_directory_verifies():
    keys = {d: Ed25519PrivateKey.generate() for d in ("a", "b", "c", "d", "e", "f")}
    state = _state({d: _raw_public(k) for d, k in keys.items() if d != "f"})
    assert state.accept(ADVERTISE, _advert("a", keys["a"])) is None
    assert state.accept(ADVERTISE, _advert("b", keys["a"])) == sess.BAD_SIGNATURE  # another device's key
    assert state.accept(ADVERTISE, _advert("c", keys["c"], signed_round=3)) == sess.BAD_SIGNATURE  # a replay
    assert state.accept(ADVERTISE, _advert("d", keys["d"], swap_mask=True)) == sess.BAD_SIGNATURE  # substituted
    assert state.accept(ADVERTISE, _advert("e", None)) == sess.BAD_SIGNATURE  # unsigned
    assert state.accept(ADVERTISE, _advert("f", keys["f"])) == NO_IDENTITY  # not in the directory
    assert set(state.adverts) == {"a"}  # the refused never reach a neighbour's KeyDirectory


def test_without_a_directory_accept_relays_advertisements_unchecked():
    state = _state(None)
    forged = Ed25519PrivateKey.generate()
    for device_id, key in (("a", forged), ("b", None)):
        assert state.accept(ADVERTISE, _advert(device_id, key)) is None
    assert set(state.adverts) == {"a", "b"}


SIX = (12, 20, 16, 24, 18, 14)


def test_the_coordinator_leaves_out_a_device_whose_signature_it_does_not_verify_and_the_round_commits(
        model, tmp_path, caplog):  # noqa: F811
    """dev1 signs with a key the directory does not hold. Relayed, its advertisement made all five
    neighbours decline (secagg_bad_signature) and the round was lost; refused at the coordinator,
    dev1 is absent from every cohort and the round commits the plain mean of the other five. It
    then sits out for a while (test_a_bad_signer_sits_out_ten_minutes_then_twenty)."""
    caplog.set_level(logging.INFO, "fedge.coordinator")
    fleet, ids = _bad_signer_fleet(model, tmp_path)
    c = fleet.coordinator
    old = copy_params(c.state.params)
    record = _run_round(fleet)
    assert record.committed and record.reports == 5, record.why
    reason = sess.BAD_SIGNATURE
    assert c.rejections[reason] == 1 and not c.declines, (dict(c.rejections), dict(c.declines))
    assert c.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": reason}) == 1
    assert any(reason in r.getMessage() and "dev1" in r.getMessage() for r in caplog.records)
    directories = [m for m in fleet.wire if isinstance(m, KeyDirectory)]
    assert {m.device_id for m in directories} == set(ids) - {"dev1"}
    assert all("dev1" not in m.cohort for m in directories)
    expected = _expected_mean(fleet, set(ids) - {"dev1"})
    np.testing.assert_allclose(_flat(c.state.params) - _flat(old), expected, rtol=0, atol=1e-6)
    assert "dev1" not in c.eligible_devices()


def _bad_signer_fleet(model, tmp_path):
    """Six devices in the coordinator's directory; dev1 signs with a key the directory lacks. No
    over-selection and the default 600 s round deadline: the advertise stage stops waiting for the
    refused device (shell.admit), else it held the round to that deadline and the next round began
    after the 600 s a first offence sits out."""
    ids = [f"dev{i}" for i in range(len(SIX))]
    privates, path = provision(ids, tmp_path)
    checked = dataclasses.replace(SECURE, directory_file=str(path))
    fleet = make_fleet(model, tmp_path, sizes=SIX, min_reports=3, **{**SETTINGS, "secure_aggregation": checked})
    hand_out(fleet, privates, load_directory(path), forged=("dev1",))
    return fleet, ids


def _said(caplog, reason: str = sess.BAD_SIGNATURE) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"rejected message from dev1: {reason} " in r.getMessage()]


def _window(c, at: float, seconds: float, clock) -> None:
    """dev1 is left out until `at + seconds` and selectable from then on (the clock ends there)."""
    clock.advance(at + seconds - 1 - clock.now())
    assert "dev1" not in c.eligible_devices()
    clock.advance(1)
    assert "dev1" in c.eligible_devices()


def test_a_bad_signer_sits_out_ten_minutes_then_twenty(model, tmp_path, caplog):  # noqa: F811
    """Selected, a device whose signature fails trained in full and was refused every round (a
    misprovisioned one, or someone holding a listed id without its key). Refused once, it is not
    selected while the clock is inside 600 s of its offence, selected again after, and left out
    1,200 s after a second offence; one line names it, why and for how long each time."""
    caplog.set_level(logging.INFO, "fedge.coordinator")
    fleet, ids = _bad_signer_fleet(model, tmp_path)
    c, reason = fleet.coordinator, sess.BAD_SIGNATURE
    first = fleet.clock.now()
    assert _run_round(fleet).committed
    assert c.rejections[reason] == 1
    (line,) = _said(caplog)
    assert "left out of rounds for 600 s" in line and "identity directory" in line
    assert fleet.clock.now() < first + 600  # the next round begins inside the window
    seen = len(fleet.wire)
    record = _run_round(fleet)
    assert record.committed and record.selected == 5 and record.reports == 5, record.why
    assert not [m for m in fleet.wire[seen:] if getattr(m, "device_id", "") == "dev1" and not isinstance(m, Pace)]
    assert c.rejections[reason] == 1
    _window(c, first, 600, fleet.clock)
    second = fleet.clock.now()
    record = _run_round(fleet)
    assert record.committed and record.selected == 6 and record.reports == 5, record.why
    assert c.rejections[reason] == 2 and "left out of rounds for 1200 s" in _said(caplog)[-1]
    _window(c, second, 1200, fleet.clock)


def test_a_refused_advertisement_delivered_twice_is_counted_and_sidelined_once(model, tmp_path, caplog):  # noqa: F811
    """QoS 1 may deliver dev1's advertisement twice: the stage no longer expects dev1 once its
    first copy was refused, so the copy is `stale_round` (counted as any message out of its
    round), not a second offence (metric, log line, and a doubled 1,200 s)."""
    caplog.set_level(logging.INFO, "fedge.coordinator")
    fleet, _ = _bad_signer_fleet(model, tmp_path)
    c = fleet.coordinator
    transport = next(a for a in fleet.agents if a.device_id == "dev1").transport
    publish = transport.publish

    def twice(topic, payload, **kw):
        again = isinstance(decode_message(payload), KeyAdvertisement)
        for _ in range(2 if again else 1):
            publish(topic, payload, **kw)

    transport.publish = twice
    at = fleet.clock.now()
    record = _run_round(fleet)
    assert record.committed and record.reports == 5, record.why
    assert dict(c.rejections) == {sess.BAD_SIGNATURE: 1, "stale_round": 1}, dict(c.rejections)
    assert exported(c, sess.BAD_SIGNATURE) == 1 and exported(c, "stale_round") == 1
    assert len(_said(caplog)) == 1
    _window(c, at, 600, fleet.clock)


def test_a_device_the_directory_lacks_is_never_selected_and_said_once(model, tmp_path, caplog):  # noqa: F811
    """dev1 is missing from the coordinator's directory. Selected, it trained in full every round
    and was refused (secagg_no_identity) every time, and the advertise stage waited for it until
    its deadline. Left out at selection: two rounds commit the others' mean, no task reaches
    dev1, nothing is refused, one log line names it, and the gauge counts it."""
    caplog.set_level(logging.INFO, "fedge.coordinator")
    ids = [f"dev{i}" for i in range(len(SIX))]
    privates, path = provision(ids, tmp_path, unlisted=("dev1",))
    checked = dataclasses.replace(SECURE, directory_file=str(path))
    fleet = make_fleet(model, tmp_path, sizes=SIX, min_reports=3, **{**SETTINGS, "secure_aggregation": checked})
    hand_out(fleet, privates, load_directory(path))
    c = fleet.coordinator
    for _ in range(2):
        old = copy_params(c.state.params)
        record = _run_round(fleet)
        assert record.committed and record.reports == 5, record.why
        assert record.selected == 5
        expected = _expected_mean(fleet, set(ids) - {"dev1"})
        np.testing.assert_allclose(_flat(c.state.params) - _flat(old), expected, rtol=0, atol=1e-6)
    assert not c.rejections and not c.declines, (dict(c.rejections), dict(c.declines))
    to_dev1 = [m for m in fleet.wire if getattr(m, "device_id", "") == "dev1" and not isinstance(m, Pace)]
    assert fleet.wire and not to_dev1  # no task, no reply: only paced, as any device not selected
    said = [r for r in caplog.records if "dev1" in r.getMessage() and "identity directory" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]
    assert c.metrics.registry.get_sample_value("fedge_secagg_unlisted_devices") == 1


def test_a_bad_directory_stops_the_leader_at_start_and_nothing_else_reads_it(tmp_path, monkeypatch):
    """A missing, malformed, hostile or empty directory stops `fedge coordinator serve`'s leader
    before anything else (a standby too, before it waits for the lease), named by key and path.
    Only the leader reads it: loading the config (forget-devices, a worker, simulate) does not, nor
    does a service whose secure aggregation is off."""
    from fedge.coordinator import service as service_module

    path = tmp_path / "identities.json"
    service = tmp_path / "service.toml"

    def write(enabled: str) -> None:
        service.write_text(f'[coordinator]\nartifacts_dir = "a"\nclients_per_round = 6\nmin_reports = 3\n'
                           f'[coordinator.secure_aggregation]\nenabled = {enabled}\nclip_range = 0.5\n'
                           f'directory_file = "{path}"\n')

    def started(cfg) -> str:  # what run_service reaches after the check: nothing of the service is real here
        raise _Started

    monkeypatch.setattr(service_module.signal, "signal", lambda *a: None)  # the test process keeps its own
    monkeypatch.setattr(service_module, "_serve", lambda *a: started(None))
    write("true")
    for content in (None, "not json", '{"dev0": "abcd"}', "[1]", "{}", "[" * 100_000):
        if content is not None:
            path.write_text(content)
        cfg = load_service_config(service)  # the config alone reads nothing
        with pytest.raises(IdentityDirectoryRefused) as info:
            service_module.run_service(cfg)
        assert info.value.reason == "secagg_directory_file"
        assert str(info.value).startswith("coordinator.secure_aggregation.directory_file: ")
        assert str(path) in str(info.value)
    path.unlink()
    os.mkfifo(path)  # would hang a reader
    with pytest.raises(IdentityDirectoryRefused, match="not a regular file"):
        service_module.run_service(load_service_config(service))
    path.unlink()
    _, good = provision(["dev0", "dev1"], tmp_path)
    read = load_directory(good)
    cfg = load_service_config(service)
    with pytest.raises(_Started):  # a good directory: the service goes on
        service_module.run_service(cfg)
    path.write_text("{}")  # broken after the start: a standby's takeover, days on, uses what it read then
    assert identities_of(cfg.coordinator.secure_aggregation) == read
    path.unlink()
    write("false")
    with pytest.raises(_Started):  # off: not read
        service_module.run_service(load_service_config(service))


class _Started(Exception):
    pass
