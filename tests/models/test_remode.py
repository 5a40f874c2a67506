"""remode: layer modes and head change, shapes do not; roles follow the new modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.params import param_infos
from fedge.models.spec import load_spec, remode


def _roles(spec) -> dict[str, str]:
    return {p.name: p.role for p in param_infos(spec)}


def test_lora_to_shared_with_global_head() -> None:
    base = load_spec("mnist-mlp-lora")
    full = remode(base, {"lora": "shared"}, head="global", name="full")
    roles = _roles(full)
    assert full.name == "full" and full.head == "global"
    assert roles["fc2.weight"] == roles["fc2.bias"] == roles["head_global.weight"] == "shared"
    assert roles["fc1.weight"] == "frozen" and "fc2.lora_a" not in roles and "head_personal.weight" not in roles
    assert base.layers[1].mode == "lora"  # the original is untouched (frozen dataclasses)
    assert full.embedding_shape() == base.embedding_shape()


def test_everything_frozen_caches_the_whole_body() -> None:
    head_only = remode(load_spec("cnn-8-lora"), {"lora": "frozen", "shared": "frozen", "personal": "frozen"})
    assert all(layer.mode == "frozen" for layer in head_only.layers)
    assert head_only.backbone_depth == len(head_only.layers)
    assert {r for n, r in _roles(head_only).items() if n.startswith("head")} == {"shared", "personal"}
    assert all(r == "frozen" for n, r in _roles(head_only).items() if not n.startswith("head"))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="mode"):
        remode(load_spec("mnist-mlp-lora"), {"lora": "adapter"})


def test_lora_train_a_false_freezes_a_and_shares_only_b(tmp_path) -> None:
    text = (Path(__file__).resolve().parents[2] / "models/specs/mnist-mlp-lora.toml").read_text()
    spec_file = tmp_path / "ffa.toml"
    spec_file.write_text(text.replace("lora_alpha = 16.0", "lora_alpha = 16.0\nlora_train_a = false"))
    ffa = load_spec(spec_file)
    roles, base = _roles(ffa), _roles(load_spec("mnist-mlp-lora"))
    assert roles["fc2.lora_a"] == "frozen" and roles["fc2.lora_b"] == "shared"
    assert base["fc2.lora_a"] == "shared"
    shared = {n for n, r in roles.items() if r == "shared"}
    assert shared == {n for n, r in base.items() if r == "shared"} - {"fc2.lora_a"}
    spec_file.write_text(text.replace("lora_alpha = 16.0", "lora_alpha = 16.0\nlora_train_a = \"no\""))
    with pytest.raises(ConfigError, match="lora_train_a"):
        load_spec(spec_file)
