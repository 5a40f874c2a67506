"""Each personalization mode against its row of the table in tools/simulate/personalization.py,
on a base spec with a layer of every trainable kind (shared, lora, personal) and a frozen one: the
default spec has no shared layer, so nothing checked that `head` freezes one (found by the
mutation7-simfleet audit)."""

from __future__ import annotations

import pytest

from fedge.models.spec import mlp_spec
from fedge.tools.simulate.personalization import personalized_spec

BASE = mlp_spec(10, 3, hidden=(8, 7, 6, 5), modes=("frozen", "shared", "lora", "personal"), head="personal")
# mode -> (layer modes, head), as the docstring's table says
TABLE = {
    "adapters": (("frozen", "shared", "lora", "personal"), "personal"),  # as given
    "head": (("frozen", "frozen", "frozen", "frozen"), "dual"),
    "finetune": (("frozen", "shared", "shared", "shared"), "global"),
    "full": (("frozen", "shared", "shared", "shared"), "dual"),
    "none": (("frozen", "shared", "lora", "personal"), "global"),
}


@pytest.mark.parametrize("mode", sorted(TABLE))
def test_each_mode_is_its_row_of_the_table(mode):
    spec = personalized_spec(BASE, mode)
    layers, head = TABLE[mode]
    assert tuple(layer.mode for layer in spec.layers if layer.kind == "dense") == layers
    assert spec.head == head
    assert spec.name == (BASE.name if mode == "adapters" else f"{BASE.name}-{mode}")
