"""Open files until every descriptor up to a number is taken, so the next socket gets a higher
one: for code that must work past select()'s limit (FD_SETSIZE, 1024).

    with descriptors_taken_up_to(1100):
        ...  # every new descriptor is > 1100

The soft RLIMIT_NOFILE is raised for the block if need be (and put back); without a hard
limit that allows it, the test skips, naming the limit."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

HEADROOM = 256  # descriptors left free above `up_to` for what the test opens


@contextmanager
def descriptors_taken_up_to(up_to: int) -> Iterator[None]:
    import resource  # POSIX only, like the poll() the code under test uses

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = up_to + HEADROOM
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}: cannot open descriptors past {up_to}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    taken: list[int] = []
    try:
        while not taken or taken[-1] < up_to:  # os.open returns the lowest free number
            taken.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
