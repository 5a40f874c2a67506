"""poll_select.select where poll() says only HUP (mutation7-kernel): a pipe whose writer is
gone and a TCP socket that never connected are readable to select.select (the read then says
end of stream or the error), and must be to poll_select too, or paho's loop waits on a dead link.
Oracle: select.select on the same descriptors."""

from __future__ import annotations

import os
import select as stdlib_select
import socket

from fedge.edge_runtime.kernel.transport import poll_select


def test_a_pipe_whose_writer_is_gone_is_readable_as_select_says():
    r, w = os.pipe()
    try:
        os.close(w)
        assert stdlib_select.select([r], [], [], 0) == ([r], [], [])
        assert poll_select.select([r], [], [], 0) == ([r], [], [])
    finally:
        os.close(r)


def test_a_socket_that_never_connected_gets_select_s_answer():
    with socket.socket() as s:
        want = stdlib_select.select([s], [s], [], 0)
        assert poll_select.select([s], [s], [], 0) == want
        assert want[0] == [s]  # Linux: a TCP socket in CLOSE state reports hang-up
