"""A select() for paho's network thread without select's file-descriptor ceiling.

paho's network loop (loop_start, paho 2.x) waits in select.select(), which refuses any file
descriptor numbered FD_SETSIZE (1024) or more with ValueError. paho takes that for a lost
link: it closes the socket, reconnects, and the new socket fails the same way, with nothing
logged (paho-mqtt issue #819). So a client in a process that already holds about a thousand
open files (each client holds three: its socket and the socket pair that wakes its thread)
never connects and never says why. The 200-device ejabberd drill met it in a full test run:
the devices created last got descriptors past 1023, and 9 of them never checked in.

`select` keeps select.select's contract for what paho passes it (objects with fileno(), lists
back, a timeout in seconds) on top of poll(), which has no such limit; `install` puts it where
paho's loop looks select up. Where poll() is missing (Windows), paho keeps select.select.
"""

from __future__ import annotations

import errno
import math
import select as _select
from types import ModuleType

# select() calls a socket readable at end of stream and on error (the read then says which),
# and writable when a write would fail at once; poll() reports those as HUP and ERR.
_READ_EVENTS = ("POLLIN", "POLLPRI", "POLLHUP", "POLLERR")
_WRITE_EVENTS = ("POLLOUT", "POLLHUP", "POLLERR")


def _mask(names) -> int:
    out = 0
    for name in names:
        out |= getattr(_select, name, 0)
    return out


_READ, _WRITE = _mask(_READ_EVENTS), _mask(_WRITE_EVENTS)
_WANT_READ, _WANT_WRITE = _mask(("POLLIN", "POLLPRI")), _mask(("POLLOUT",))


def _fileno(obj) -> int:
    fd = obj if isinstance(obj, int) else obj.fileno()
    if fd < 0:  # a closed socket: select.select raises the same
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def select(rlist, wlist, xlist, timeout: float | None = None) -> tuple[list, list, list]:
    """select.select(rlist, wlist, [], timeout) for any descriptor number."""
    if xlist:
        raise ValueError("exceptional conditions are not watched; paho passes none")
    reads, writes = [(o, _fileno(o)) for o in rlist], [(o, _fileno(o)) for o in wlist]
    masks: dict[int, int] = {}
    for pairs, mask in ((reads, _WANT_READ), (writes, _WANT_WRITE)):
        for _, fd in pairs:
            masks[fd] = masks.get(fd, 0) | mask
    poller = _select.poll()
    for fd, mask in masks.items():
        poller.register(fd, mask)
    ready = dict(poller.poll(None if timeout is None else max(0, math.ceil(timeout * 1000))))
    if any(events & getattr(_select, "POLLNVAL", 0) for events in ready.values()):
        raise OSError(errno.EBADF, "select: a descriptor is not open")  # what select.select raises
    return ([o for o, fd in reads if ready.get(fd, 0) & _READ],
            [o for o, fd in writes if ready.get(fd, 0) & _WRITE], [])


class _PollSelectModule(ModuleType):
    """What paho's module-level name `select` refers to once installed: this module's select,
    and the real select module's everything else."""

    def __init__(self) -> None:
        super().__init__("select")
        self.select = select

    def __getattr__(self, name: str):
        return getattr(_select, name)


def install(paho_client_module) -> bool:
    """Make paho.mqtt.client's loop wait in `select` above; False (nothing changed) without poll()."""
    if not hasattr(_select, "poll"):
        return False
    if not isinstance(getattr(paho_client_module, "select", None), _PollSelectModule):
        paho_client_module.select = _PollSelectModule()
    return True
