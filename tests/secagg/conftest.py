"""Fixtures shared by the secure-aggregation tests. `model` is the tiny model of
tests/tiny_model.py, module-scoped as it was where the fleet tests defined it: each module that
asks for it builds its own, once (about 0.05 s); a module that defines its own `model` keeps it."""

import pytest

from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))
