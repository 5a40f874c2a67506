"""fedge.tools.audit.mutation_plant, the mutation audits' planter, on a tiny module of its own:
a mutant the test notices is caught, one it cannot is missed, the source is put back byte for
byte, and a mutant whose text is not in the file stops the run by name."""

from __future__ import annotations

import json

import pytest

from fedge.tools.audit.mutation_plant import load_mutants, plant

SOURCE = "def positive(x):\n    return x > 0  # zero is not positive\n"
TEST = "from sign import positive\n\n\ndef test_zero():\n    assert not positive(0)\n"
MUTANTS = '''MUTANTS = [
    ("gt-ge", "sign.py", "x > 0", "x >= 0", "g"),
    ("comment", "sign.py", "# zero is not positive", "# zero is not", "g"),
]
GROUPS = {"g": "test_sign.py"}
AFTER = {"gt-ge": "test_sign.py"}
'''


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "sign.py").write_text(SOURCE)
    (tmp_path / "test_sign.py").write_text(TEST)
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "mutants.py").write_text(MUTANTS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_caught_missed_and_restored(repo):
    results = plant(repo / "audit", repo / "out.json")
    assert results["gt-ge"]["caught"] and results["gt-ge"]["rc"] == 1
    assert not results["comment"]["caught"] and results["comment"]["rc"] == 0
    assert (repo / "sign.py").read_text() == SOURCE
    assert json.loads((repo / "out.json").read_text()) == results
    again = plant(repo / "audit", repo / "after.json", after=True)
    assert list(again) == ["gt-ge"]  # --after runs only the mutants AFTER names
    assert load_mutants(repo / "audit")[1] == {"g": "test_sign.py"}


def test_a_mutant_not_in_its_file_stops_by_name(repo):
    (repo / "audit" / "mutants.py").write_text(MUTANTS.replace('"x > 0"', '"x > 1"'))
    with pytest.raises(SystemExit, match="gt-ge: the text to replace occurs 0 times in sign.py"):
        plant(repo / "audit", repo / "out.json")
    assert (repo / "sign.py").read_text() == SOURCE
