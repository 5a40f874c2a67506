"""State set aside for other model contents, at its documented edges (superseded.py): the 2
newest set-aside folders are kept, meta.json moves with state.npz, the newest folder of the
contents that come back is the one put back; and a file where a model's state folder belongs
is bad_state in the check-ins (state_health.py) (mutation5-device audit)."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.state_health import BAD_STATE, StateHealth
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.superseded import PREFIX


def _key(n: int) -> str:
    return f"{n:02x}" * 16


def _w(store: DeviceStore) -> float:
    return float(store.load_personal()["w"][0])


def test_the_two_newest_set_aside_folders_keep_their_files(tmp_path):
    for n in range(1, 6):  # contents 1..4 set aside in turn; 5 in use
        DeviceStore(tmp_path, "m", key=_key(n)).save_personal({"w": np.full(3, n, np.float32)})
    full = sorted(p.name for p in (tmp_path / "m").glob(f"{PREFIX}*") if any(p.iterdir()))
    assert full == [f"{PREFIX}3-{_key(3)[:16]}", f"{PREFIX}4-{_key(4)[:16]}"]  # the README's "the 2 newest"


def test_meta_json_goes_with_the_state_it_describes_and_comes_back_with_it(tmp_path):
    store = DeviceStore(tmp_path, "m", key=_key(1))
    store.save_personal({"w": np.full(3, 1, np.float32)})
    store.save_meta({"round": 7})
    fresh = DeviceStore(tmp_path, "m", key=_key(2))  # other contents: state and meta set aside
    assert fresh.load_meta() == {} and fresh.load_personal() is None
    back = DeviceStore(tmp_path, "m", key=_key(1))
    assert back.load_meta() == {"round": 7} and _w(back) == 1.0


def test_the_newest_folder_of_the_returning_contents_is_put_back(tmp_path):
    folder = tmp_path / "m"
    for n, value in ((1, 10.0), (2, 20.0)):  # contents 1 set aside twice: 10 first, then 20
        DeviceStore(folder, f"{PREFIX}{n}-{_key(1)[:16]}", key=_key(1)).save_personal(
            {"w": np.full(3, value, np.float32)})
    DeviceStore(tmp_path, "m", key=_key(2)).save_personal({"w": np.full(3, 2, np.float32)})
    assert _w(DeviceStore(tmp_path, "m", key=_key(1))) == 20.0


def test_a_file_where_the_state_folder_belongs_is_bad_state_until_it_is_moved(tmp_path):
    (tmp_path / "m").write_text("not fedge's")
    health = StateHealth(tmp_path, ["m"])
    assert health.reason() == BAD_STATE
    (tmp_path / "m").rename(tmp_path / "m.aside")
    assert health.reason() is None
