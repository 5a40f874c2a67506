"""The device's state in one file (edge_runtime/store.py): parts round-trip, a staged state is
the whole next state, and a device that ran an older fedge (a file per part, a partial staged
file) keeps its state. Oracle: the arrays written, compared bit for bit, and the folder's listing.
"""

from __future__ import annotations

import io
import json

import numpy as np

from fedge.edge_runtime.kernel.files import DURABLE_WRITES
from fedge.edge_runtime.store import DeviceStore


def _same(got, want) -> bool:
    return got is not None and set(got) == set(want) and all(
        got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]) for k in want)


def _npz(path, arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_parts_round_trip_in_one_file_including_names_with_slashes(tmp_path):
    store = DeviceStore(tmp_path, "m")
    personal = {"/head/Gemm_weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc2.bias": np.ones(2, np.float64)}
    residual = {"model/dense/kernel": np.full(4, -0.5, np.float32)}
    store.save_personal(personal)
    store.save_residual(residual)
    store.save_residual({})  # an empty part is kept as empty, not as absent
    store.save_opt_state(None)
    again = DeviceStore(tmp_path, "m")
    assert _same(again.load_personal(), personal)
    assert again.load_residual() == {} and again.load_opt_state() is None and again.load_control() is None
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["state.npz"]


def test_a_staged_state_is_the_whole_next_state_and_applying_it_writes_nothing_durable(tmp_path):
    store = DeviceStore(tmp_path, "m")
    control = {"w": np.full(3, 2.0, np.float32)}
    store.save_control(control)  # a part the task does not touch
    store.stage("u1", {"personal": {"p": np.ones(2, np.float32)}, "residual": {"w": np.zeros(3, np.float32)}},
                {"last_round": 4})
    assert store.load_personal() is None  # nothing applied yet
    before = DURABLE_WRITES.snapshot()
    store.commit_staged("u1")
    assert DURABLE_WRITES.snapshot() == before  # a rename
    assert _same(store.load_control(), control) and _same(store.load_personal(), {"p": np.ones(2, np.float32)})
    assert store.load_meta() == {"last_round": 4} and store.staged() == []


def test_a_device_from_an_older_fedge_keeps_its_parts_and_its_partial_staged_state(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    personal, residual = {"p": np.arange(3, dtype=np.float32)}, {"w": np.full(2, 0.25, np.float32)}
    _npz(folder / "personal.npz", personal)
    _npz(folder / "residual.npz", residual)
    _npz(folder / "opt_state.npz", {"w.momentum_buffer": np.ones(2, np.float32)})
    # What an older fedge staged: only the parts its task changed, "none" deleting one.
    new_personal = {"p": np.full(3, 7.0, np.float32)}
    _npz(folder / "staged-u9.npz", {"//meta": np.array(json.dumps({"last_round": 9})),
                                    "personal//kind": np.array("arrays"), "personal/p": new_personal["p"],
                                    "opt_state//kind": np.array("none")})
    store = DeviceStore(tmp_path, "m")
    assert _same(store.load_personal(), personal) and _same(store.load_residual(), residual)  # read as they are
    assert store.staged() == ["u9"]
    store.commit_staged("u9")
    assert _same(store.load_personal(), new_personal) and _same(store.load_residual(), residual)
    assert store.load_opt_state() is None and store.load_meta() == {"last_round": 9}
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "state.npz"]  # the older files went


def test_a_rejected_scaffold_upload_puts_c_back_in_one_durable_write(tmp_path):
    store = DeviceStore(tmp_path, "m")
    old_c, old_res = {"w": np.zeros(2, np.float32)}, {"w": np.full(2, 0.1, np.float32)}
    store.save_state({"control": {"w": np.ones(2, np.float32)}, "control_residual": {"w": np.zeros(2, np.float32)},
                      "control_undo": store.undo_arrays("u1", old_c, old_res)})
    before = DURABLE_WRITES.snapshot()
    undo = store.load_control_undo()
    store.save_state({"control": undo[1], "control_residual": undo[2], "control_undo": None})
    after = DURABLE_WRITES.snapshot()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == {"state.npz": 1}
    assert _same(store.load_control(), old_c) and _same(store.load_control_residual(), old_res)
    assert store.load_control_undo() is None


def test_names_that_would_read_back_wrong_are_refused(tmp_path):
    import pytest

    store = DeviceStore(tmp_path, "m")
    for name in ("", "/kind"):
        with pytest.raises(ValueError, match="cannot be stored"):
            store.save_personal({name: np.ones(1)})
    assert store.load_personal() is None


def test_the_state_file_is_parsed_once_per_store_and_reparsed_when_it_changes(tmp_path, monkeypatch):
    import fedge.edge_runtime.store as store_module
    parses = []
    real = store_module.load_npz
    monkeypatch.setattr(store_module, "load_npz",
                        lambda path, only=None: parses.append((path.name, only)) or real(path, only))
    writer = DeviceStore(tmp_path, "m")
    writer.save_personal({"w": np.zeros(3, np.float32)})
    reader = DeviceStore(tmp_path, "m")
    parses.clear()
    got = reader.load_personal()
    got["w"][:] = 7.0  # the caller's copy: the next load must not see it
    assert reader.load_opt_state() is None and _same(reader.load_personal(), {"w": np.zeros(3, np.float32)})
    assert parses == [("state.npz", None)]
    writer.save_personal({"w": np.ones(5, np.float32)})  # another store: a new file, a new key
    assert _same(reader.load_personal(), {"w": np.ones(5, np.float32)})
    reader.stage("u1", {"residual": {"r": np.ones(2)}}, meta={"round": 1})
    parses.clear()
    reader.commit_staged("u1")
    assert parses == [("staged-u1.npz", ("//meta", "//whole"))]  # the staged state's arrays are not read
    assert _same(reader.load_residual(), {"r": np.ones(2)})
    assert _same(reader.load_personal(), {"w": np.ones(5, np.float32)})

