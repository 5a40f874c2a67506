"""configfile.from_dict exactly at its documented bounds (mutation7-kernel): a field's declared
[lo, hi] holds both ends, integers fit 64 bits (2**63 - 1 is in, 2**63 is out), strings hold
at most MAX_TEXT (4,096) characters. Each refusal is a ConfigError naming the key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fedge.edge_runtime.kernel.configfile import MAX_TEXT, from_dict
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.wire_fields import I64, bounded


@dataclass(frozen=True)
class _Cfg:
    rounds: int = bounded(1, 10, 1)
    big: int = 0
    name: str = ""


@pytest.mark.parametrize("value, ok", [(1, True), (10, True), (0, False), (11, False)])
def test_a_declared_range_holds_both_ends(value, ok):
    if ok:
        assert from_dict(_Cfg, {"rounds": value}, "x.toml").rounds == value
    else:
        with pytest.raises(ConfigError, match=r"x.toml: rounds must be in \[1, 10\]"):
            from_dict(_Cfg, {"rounds": value}, "x.toml")


@pytest.mark.parametrize("value, ok", [(I64[1], True), (I64[0], True), (I64[1] + 1, False), (I64[0] - 1, False)])
def test_integers_fit_64_bits_exactly(value, ok):
    assert I64 == (-(2**63), 2**63 - 1)
    if ok:
        assert from_dict(_Cfg, {"big": value}).big == value
    else:
        with pytest.raises(ConfigError, match="big: .* does not fit in 64 bits"):
            from_dict(_Cfg, {"big": value})


def test_a_string_holds_at_most_4096_characters():
    assert MAX_TEXT == 4096
    assert from_dict(_Cfg, {"name": "n" * 4096}).name == "n" * 4096
    with pytest.raises(ConfigError, match="name: a string of 4,097 characters; at most 4,096"):
        from_dict(_Cfg, {"name": "n" * 4097})

