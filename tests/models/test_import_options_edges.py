"""The --from-onnx options' documented bounds, both ends (models/import_options.py), that the
mutation8-build audit found no test reaching: lora_rank up to MAX_UNITS and input_shape up to
MAX_VALUES values are taken, one past is refused; lora_alpha must be finite. These are checked
before the file is read, so the path needs no file."""

from __future__ import annotations

import math

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.import_options import ImportOptions
from fedge.models.spec import MAX_UNITS, MAX_VALUES


def test_the_largest_lora_rank_is_taken_and_one_more_refused():
    assert ImportOptions("m.onnx", lora_rank=MAX_UNITS).lora_rank == 65_536
    with pytest.raises(ConfigError, match="lora_rank must be in"):
        ImportOptions("m.onnx", lora_rank=MAX_UNITS + 1)


def test_an_input_of_exactly_max_values_is_taken_and_one_more_refused():
    assert math.prod(ImportOptions("m.onnx", input_shape=(1, 4096, 4096)).input_shape) == MAX_VALUES == 1 << 24
    with pytest.raises(ConfigError, match="at most 16777216 values"):
        ImportOptions("m.onnx", input_shape=(MAX_VALUES + 1,))


@pytest.mark.parametrize("alpha", [math.inf, math.nan, 0.0, -1.0])
def test_a_lora_alpha_that_is_not_finite_and_positive_is_refused(alpha):
    with pytest.raises(ConfigError, match="lora_alpha must be > 0 and finite"):
        ImportOptions("m.onnx", lora_alpha=alpha)

