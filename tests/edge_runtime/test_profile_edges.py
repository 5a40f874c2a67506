"""Device profiles at their edges (the mutation8-adversary audit): an infinite compute speed, and
a path to a profile file that is not there."""

from __future__ import annotations

import math
import re

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.simulate.profiles import DeviceProfile, load_profile


@pytest.mark.parametrize("speed", [math.inf, math.nan, -1.0, 0.0])
def test_a_compute_speed_that_is_not_a_finite_positive_number_is_refused(tmp_path, speed):
    """compute_speed multiplies every simulated step time: inf made each step last for ever. A
    profile file's inf is refused by the TOML reader (not a finite number); one built in Python
    (a benchmark's grid) by DeviceProfile itself, by name."""
    with pytest.raises(ConfigError, match=r"compute_speed = .*must be > 0 \(profile warp\)"):
        DeviceProfile(name="warp", compute_speed=speed)
    path = tmp_path / "warp.toml"
    path.write_text(f"compute_speed = {speed}\n")
    with pytest.raises(ConfigError, match="compute_speed"):
        load_profile(path)
    assert DeviceProfile(compute_speed=1e300).compute_speed == 1e300  # large but finite: a very slow device


def test_a_path_with_a_folder_is_read_as_a_file_not_a_shipped_name(tmp_path):
    """'dir/name' (no .toml) is a path: when no file is there the error names the file, not the
    shipped profiles (the name 'pi4-ups' inside another folder is not the shipped one)."""
    missing = tmp_path / "pi4-ups"
    with pytest.raises(ConfigError, match=re.escape(f"config file not found: {missing}")):
        load_profile(str(missing))
