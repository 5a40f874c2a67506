"""A spec's `onnx = PATH` (import a model file) with hostile keys beside it: refused by the
key's dotted path before the file is read (m.onnx below does not exist).

`onnx = 1` (or a table, an array) once reached Path() and stopped `fedge build-artifacts` with a
TypeError; `onnx` beside [[model.layers]] was refused as "unknown key(s) 'layers'", naming
neither; lora_rank, lora_alpha and input_shape were checked only by the imported ModelSpec,
after the file was read, and `cut = ""` only by the search for a tensor of that name.
Oracle: the expected message starts, written by hand.
"""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.spec import load_spec

CASES = [
    ("onnx = 1\n", "s.toml: model.onnx: expected a string"),
    ("onnx = [\"m.onnx\"]\n", "s.toml: model.onnx: expected a string"),
    ('onnx = ""\n', "s.toml: model.onnx is empty"),
    ('onnx = "m.onnx"\n[[model.layers]]\nname = "fc1"\nunits = 3\n', "s.toml: model.onnx imports a model file"),
    ('onnx = "m.onnx"\nlora_rank = 0\n', "s.toml: model.lora_rank must be in [1, 65536]"),
    ('onnx = "m.onnx"\nlora_alpha = -1.0\n', "s.toml: model.lora_alpha must be > 0"),
    ('onnx = "m.onnx"\ninput_shape = [3, 0]\n', "s.toml: model.input_shape (3, 0) must be positive"),
    ('onnx = "m.onnx"\ncut = ""\n', "s.toml: model.cut must name a tensor"),
    ('onnx = "m.onnx"\ndefault_role = "trained"\n', "s.toml: model.default_role 'trained' not in"),
    ('onnx = "m.onnx"\nnum_classes = 4611686018427387904\n', "s.toml: model.num_classes must be 0"),
]


@pytest.mark.parametrize("text, start", CASES, ids=[start.split(" ")[1].rstrip(":") + f"-{i}"
                                                     for i, (_, start) in enumerate(CASES)])
def test_a_hostile_key_beside_onnx_is_refused_by_its_path(tmp_path, text, start):
    path = tmp_path / "s.toml"
    path.write_text("[model]\n" + text)
    with pytest.raises(ConfigError) as refused:
        load_spec(path)
    assert str(refused.value).startswith(start), str(refused.value)
