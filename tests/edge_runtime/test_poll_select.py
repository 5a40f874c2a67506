"""poll_select.select against select.select as the oracle where select can watch the
descriptor, and past 1023 where it cannot; and its installation into paho's module."""

from __future__ import annotations

import os
import select as stdlib_select
import socket
import types

import paho.mqtt.client as paho_client
import pytest

from fedge.edge_runtime.kernel.transport import poll_select
from tests.high_fds import descriptors_taken_up_to


def _states():
    """A socket pair in each state paho's loop meets: idle, data waiting, peer gone."""
    a, b = socket.socketpair()
    yield "idle", a
    b.send(b"x")
    yield "data", a
    b.close()
    yield "peer closed", a
    a.close()


@pytest.mark.parametrize("watch", ["read", "write", "both"])
def test_same_answer_as_select_for_a_low_descriptor(watch):
    for state, sock in _states():
        rlist = [sock] if watch in ("read", "both") else []
        wlist = [sock] if watch in ("write", "both") else []
        assert poll_select.select(rlist, wlist, [], 0) == stdlib_select.select(rlist, wlist, [], 0), state


def test_a_descriptor_past_1023_is_watched_where_select_refuses_it():
    a, b = socket.socketpair()
    with descriptors_taken_up_to(1100):
        moved = socket.socket(fileno=os.dup(a.fileno()))  # the lowest free number: past 1100
    a.close()
    try:
        assert moved.fileno() > 1023
        with pytest.raises(ValueError):  # the premise: paho's select cannot take it
            stdlib_select.select([moved], [], [], 0)
        assert poll_select.select([moved], [moved], [], 0) == ([], [moved], [])
        b.send(b"x")
        assert poll_select.select([moved], [], [], 1.0) == ([moved], [], [])
    finally:
        moved.close()
        b.close()


def test_a_closed_socket_or_descriptor_is_refused_like_select_does():
    a, b = socket.socketpair()
    a.close()
    b.close()
    for impl in (stdlib_select.select, poll_select.select):
        with pytest.raises(ValueError):  # paho reads this as a lost link
            impl([a], [], [], 0)
        r, w = os.pipe()
        os.close(w)
        os.close(r)
        with pytest.raises(OSError):  # a number that is no longer open: EBADF
            impl([r], [], [], 0)


def test_nothing_ready_within_the_timeout_is_three_empty_lists():
    a, b = socket.socketpair()
    try:
        assert poll_select.select([a], [], [], 0.01) == ([], [], [])
    finally:
        a.close()
        b.close()


def test_install_swaps_only_select_and_is_in_effect_for_paho():
    fake = types.SimpleNamespace(select=stdlib_select)
    assert poll_select.install(fake)
    first = fake.select
    assert fake.select.select is poll_select.select
    assert fake.select.poll is stdlib_select.poll and fake.select.error is stdlib_select.error
    assert poll_select.install(fake) and fake.select is first  # once
    import fedge.edge_runtime.kernel.transport.mqtt  # noqa: F401 - importing the transport installs it

    assert paho_client.select.select is poll_select.select
