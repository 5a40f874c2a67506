"""The shared argparse types at their documented limits (the mutation8-adversary audit): a name
of exactly 255 bytes and a path of exactly 4,095, an integer at its upper bound, a time limit
of zero, a names list of blanks, an integer list bad past its first item."""

from __future__ import annotations

import argparse
import os

import pytest

from fedge.tools.cli_args import MAX_SECONDS, int_in, int_list_arg, names_arg, path_arg, seconds_arg


def test_a_name_of_255_bytes_is_a_path_and_256_is_not():
    name = "é" * 127 + "x"  # 2 x 127 + 1 = 255 bytes, 128 characters: bytes are what Linux counts
    assert len(os.fsencode(name)) == 255 and path_arg("runs/" + name) == "runs/" + name
    with pytest.raises(argparse.ArgumentTypeError, match="each name at most 255 bytes"):
        path_arg("runs/" + name + "y")


def test_a_path_of_4095_bytes_is_a_path_and_4096_is_not():
    parts = ["a" * 200] * 20  # 20 x 200 + 19 slashes = 4,019 bytes
    path = "/".join(parts) + "/" + "b" * (4095 - 4020)
    assert len(os.fsencode(path)) == 4095 and path_arg(path) == path
    with pytest.raises(argparse.ArgumentTypeError, match="the whole at most 4095"):
        path_arg(path + "c")


def test_an_integer_at_either_bound_is_taken():
    parse = int_in(2, 7)
    assert [parse(t) for t in ("2", "7")] == [2, 7]
    for bad in ("1", "8"):
        with pytest.raises(argparse.ArgumentTypeError, match="must be at least 2 and at most 7"):
            parse(bad)


def test_a_time_limit_must_be_above_zero_and_may_be_the_cap():
    assert seconds_arg(str(MAX_SECONDS)) == MAX_SECONDS == 1e6
    for bad in ("0", "-0.0", "nan", "inf", "1000000.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="seconds must be > 0 and finite"):
            seconds_arg(bad)


@pytest.mark.parametrize("blank", ["", ",", " ", " , ", "\t,"])
def test_a_list_of_blanks_names_nothing(blank):
    assert names_arg(" pi4 ,") == " pi4 ,"
    with pytest.raises(argparse.ArgumentTypeError, match="names nothing"):
        names_arg(blank)


def test_every_item_of_an_integer_list_is_checked():
    parse = int_list_arg(1, 10)
    assert parse("1,10,5") == "1,10,5"
    for bad in ("1,11", "3,a", "2,3,0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
