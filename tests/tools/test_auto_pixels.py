"""Auto reads 8-bit intensities saved as another dtype (float32 0..255, as `x.astype('float32')`
writes them) as a device reads uint8, x / 255, where it standardized them on each device with its
own mean and std: under label skew that moved each class differently on each device (MNIST-5k
over 20 files saved as float 0..255, Dirichlet 0.1, 5 rounds, seeds 0 / 1: 0.351 / 0.285 global
against 0.561 / 0.442 for the same pixels in [0, 1], benchmarks/results/2026-12-06-unseen-data/
pixels.json). Oracles: as_features on the same values cast to uint8, and standardize_with_fleet."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.edge_runtime.kernel.features import as_features
from fedge.tools.datasets import load_npz_dir
from fedge.tools.standardizing import resolve, standardize_per_device, standardize_with_fleet


def _pixels(folder, dtypes=("float32",) * 3, top=255, half=False, seed=0):
    """One file per dtype: 8 x 6 'pixels' in 0..top, two classes whose brightness differs, one
    device mostly one class; `half`: the last file's x_train[0, 0] is 12.5. Returns {file stem:
    arrays as saved}."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    saved = {}
    def draw(n, ones, dtype):
        y = (rng.random(n) < ones).astype(np.int64)
        x = np.clip(rng.integers(0, top // 2 + 1, (n, 6)) + y[:, None] * (top // 2), 0, top)
        return x.astype(dtype), y

    for i, dtype in enumerate(dtypes):
        ones = 0.2 if i == 0 else 0.5
        (xt, yt), (xs, ys) = draw(8, ones, dtype), draw(3, ones, dtype)
        if half and i == len(dtypes) - 1:
            xt[0, 0] = 12.5
        saved[f"dev-{i}"] = dict(x_train=xt, y_train=yt, x_test=xs, y_test=ys)
        np.savez(folder / f"dev-{i}.npz", **saved[f"dev-{i}"])
    return saved


def _same(data, want):
    """Every device's splits equal `want`'s {stem: (x_train, x_test)}, bit for bit."""
    for c in data.clients:
        assert c.x_train.dtype == np.float32 and c.x_train.tobytes() == want[c.client_id][0].tobytes()
        assert c.x_test.tobytes() == want[c.client_id][1].tobytes()


def _uint8_train_float_test(folder):
    """_pixels' two float32 files with x_train re-saved as uint8 (x_test stays float32 0..255)."""
    saved = _pixels(folder, ("float32",) * 2)
    for stem, arrays in saved.items():
        arrays["x_train"] = arrays["x_train"].astype(np.uint8)
        np.savez(folder / f"{stem}.npz", **arrays)
    return saved


def test_float_0_255_pixels_are_read_as_devices_read_uint8(tmp_path, caplog):
    saved = _pixels(tmp_path / "f32", ("float32", "float64", "int64"))
    data = load_npz_dir(tmp_path / "f32", standardize=None)
    _same(data, {k: (as_features(v["x_train"].astype(np.uint8)), as_features(v["x_test"].astype(np.uint8)))
                 for k, v in saved.items()})
    decided = data.standardizing
    assert not decided.on and decided.divided_by_255
    assert decided.why == "auto: 8-bit intensities saved as float32 and float64 and int64, read as x / 255"
    (line,) = [m for m in caplog.messages if "far from standardized" in m]
    assert "each device reads them as x / 255" in line and "save them as uint8" in line
    assert "divide them by 255 before saving" in line and "--no-standardize" in line
    assert not [m for m in caplog.messages if "Standardize each feature" in m]  # [0, 1] now: no finding left


def test_a_folder_mixing_uint8_and_float_pixels_reads_all_of_it_as_x_over_255(tmp_path):
    """The uint8 file is read as always (x / 255, left alone), the float32 ones alike."""
    saved = _pixels(tmp_path / "mix", ("uint8", "float32", "float32"))
    want = {k: (as_features(v["x_train"].astype(np.uint8)), as_features(v["x_test"].astype(np.uint8)))
            for k, v in saved.items()}
    data = load_npz_dir(tmp_path / "mix", standardize=None)
    _same(data, want)
    assert data.standardizing.why == "auto: 8-bit intensities saved as float32, read as x / 255"
    _pixels(tmp_path / "u8", ("uint8",) * 3)  # the same draws as uint8: never flagged, read as x / 255
    alike = load_npz_dir(tmp_path / "u8", standardize=None)
    _same(alike, want)
    assert not alike.standardizing.on and not alike.standardizing.divided_by_255


@pytest.mark.parametrize("top, half", [(16, False), (255, True)], ids=["digits-0..16", "a-12.5-in-0..255"])
def test_values_that_are_not_8_bit_intensities_are_still_standardized(tmp_path, top, half):
    """sklearn's digits (0..16: the largest value is not above 127) and one non-integer in [0, 255]."""
    _pixels(tmp_path / "d", top=top, half=half)
    data = load_npz_dir(tmp_path / "d", standardize=None)
    oracle = standardize_with_fleet(load_npz_dir(tmp_path / "d", standardize=False))
    _same(data, {c.client_id: (c.x_train, c.x_test) for c in oracle.clients})
    assert data.standardizing.on and not data.standardizing.divided_by_255


def test_the_flags_and_a_pretrained_model_keep_their_meaning_on_float_pixels(tmp_path):
    saved = _pixels(tmp_path / "f32")
    as_saved = {k: (v["x_train"], v["x_test"]) for k, v in saved.items()}
    _same(load_npz_dir(tmp_path / "f32", standardize=False), as_saved)
    assert load_npz_dir(tmp_path / "f32", standardize=True).standardizing.why == "--standardize"
    raw = load_npz_dir(tmp_path / "f32", standardize=False)
    dtypes = {k: {"train": np.dtype(np.float32), "test": np.dtype(np.float32)} for k in saved}
    kept = resolve(raw, None, "model.toml", dtypes)
    _same(kept, as_saved)
    assert kept.standardizing.kept_for_model and not kept.standardizing.divided_by_255


def test_a_pretrained_model_gets_float_pixels_beside_uint8_files_as_x_over_255(tmp_path):
    """Every reader takes the uint8 file as x / 255; kept as saved, the float32 files' pixels
    reached the pretrained model at 255 times that scale, with no word (stop 41's note)."""
    saved = _pixels(tmp_path / "mix", ("uint8", "float32", "float32"))
    raw = load_npz_dir(tmp_path / "mix", standardize=False)
    dtypes = {k: {s: v[f"x_{s}"].dtype for s in ("train", "test")} for k, v in saved.items()}
    read = resolve(raw, None, "model.toml", dtypes)
    _same(read, {k: (as_features(v["x_train"].astype(np.uint8)), as_features(v["x_test"].astype(np.uint8)))
                 for k, v in saved.items()})
    assert read.standardizing.divided_by_255 and not read.standardizing.on
    assert read.standardizing.why == "auto: 8-bit intensities saved as float32, read as x / 255"


def test_run_json_says_the_pixels_were_divided_and_not_standardized(tmp_path):
    """config.standardize stays what a fleet deploys as [data] standardize (false: no device
    standardized); config.divided_by_255 says the simulator read the saved floats as x / 255.
    what_ran on a stub setup (a simulation costs seconds); a shipped dataset's is null."""
    from types import SimpleNamespace

    from fedge.coordinator.config import CoordinatorConfig
    from fedge.tools.simulate.config import SimConfig
    from fedge.tools.simulate.what_ran import what_ran

    def ran(data, cfg):
        return what_ran(SimpleNamespace(data=data, cfg=cfg, new_clients=(), backend="numpy",
                                        ccfg=CoordinatorConfig()))

    _pixels(tmp_path / "f32")
    cfg = SimConfig(data_dir=str(tmp_path / "f32"))
    config = ran(load_npz_dir(cfg.data_dir, standardize=None), cfg)
    assert config["standardize"] is False and config["divided_by_255"] is True
    assert config["standardize_why"] == "auto: 8-bit intensities saved as float32, read as x / 255"
    assert not any("far from standardized" in f for f in config["data"]["findings"])
    config = ran(load_npz_dir(cfg.data_dir, standardize=True), cfg)
    assert config["standardize"] is True and config["divided_by_255"] is False
    shipped = load_npz_dir(cfg.data_dir, standardize=False)
    assert ran(replace(shipped, standardizing=None), SimConfig())["divided_by_255"] is None


def test_pixels_that_barely_vary_after_x_over_255_are_reported_as_such(tmp_path, caplog):
    """Values of 200 or 201 are 8-bit and flagged; as x / 255 they barely vary, and the finding
    says auto divided them, not that the simulator standardizes them."""
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(2):
        x = (200 + np.arange(12).reshape(4, 3) % 2).astype(np.float32)
        np.savez(folder / f"s{i}.npz", x_train=x, y_train=np.arange(4) % 2, x_test=x[:2], y_test=np.arange(2))
    assert load_npz_dir(folder, standardize=None).standardizing.divided_by_255
    (finding,) = [m for m in caplog.messages if "barely vary" in m]
    assert "even after each device read them as x / 255" in finding and "unless --no-standardize" not in finding


def test_the_8_bit_check_goes_one_split_at_a_time():
    """The scale check does not build the pool (bccc7a6), nor does this one. Oracles: tracemalloc's
    peak, under a quarter of the pool in float32 (8 devices); and the rule on the concatenation."""
    import tracemalloc

    from fedge.tools.datasets import ClientData, FederatedDataset
    from fedge.tools.intensities import eight_bit

    rng = np.random.default_rng(1)
    clients = tuple(ClientData(f"d{i}", rng.integers(0, 256, (300, 64)).astype(np.float32), np.zeros(300, np.int64),
                               rng.integers(0, 256, (50, 64)).astype(np.float32), np.zeros(50, np.int64))
                    for i in range(8))
    data = FederatedDataset("px", clients, 2, (64,), None)
    dtypes = {c.client_id: {"train": np.dtype(np.float64), "test": np.dtype(np.float32)} for c in clients}
    pool = np.concatenate([x for c in clients for x in (c.x_train, c.x_test)])
    tracemalloc.start()
    try:
        found = eight_bit(data, dtypes)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < pool.nbytes / 4, (peak, pool.nbytes)
    assert (pool == np.round(pool)).all() and 127 < pool.max() <= 255 and pool.min() >= 0  # the rule, pooled
    assert found == "float32 and float64"


def test_a_float_test_split_beside_a_uint8_train_split_is_read_as_its_train_split(tmp_path, caplog):
    """x_train saved as uint8 (read as x / 255) and x_test as the same kind of pixels in float32
    0..255: the training pool is on a unit scale, so the scale check did not flag the folder and
    the test split was scored as saved, 255 times its training split's scale, without a word.
    Splits saved as uint8 beside them say they are pixels: read as x / 255 too, and warned."""
    saved = _uint8_train_float_test(tmp_path / "mix")
    data = load_npz_dir(tmp_path / "mix", standardize=None)
    _same(data, {k: (as_features(v["x_train"]), as_features(v["x_test"].astype(np.uint8))) for k, v in saved.items()})
    assert data.standardizing.divided_by_255 and not data.standardizing.on
    (line,) = [m for m in caplog.messages if "x / 255" in m]
    assert "None" not in line and "beside splits saved as uint8" in line and "save them as uint8" in line


def _an_age_beside(folder, rng, top, columns):
    """3 int64 files of an age 0..200 beside `columns` integer columns 0..top: auto standardizes
    them on each device. Oracle: standardize_with_fleet of the folder as saved."""
    folder.mkdir()
    for i in range(3):
        x = np.column_stack([rng.integers(0, 201, 10), rng.integers(0, top + 1, (10, columns))]).astype(np.int64)
        np.savez(folder / f"d{i}.npz", x_train=x[:7], y_train=np.arange(7) % 2, x_test=x[7:], y_test=np.arange(3) % 2)
    data = load_npz_dir(folder, standardize=None)
    oracle = standardize_with_fleet(load_npz_dir(folder, standardize=False))
    _same(data, {c.client_id: (c.x_train, c.x_test) for c in oracle.clients})
    assert data.standardizing.on and not data.standardizing.divided_by_255


def test_integer_features_with_0_1_flag_columns_are_not_taken_for_pixels(tmp_path):
    """An age 0..200 beside six 0/1 flags, saved as int64, passed the 8-bit rule and was read as
    x / 255, the flags as 0 or 1/255 (5 files of 200 rows, label from two flags and age > 100,
    5 rounds, seeds 0 / 1: 0.728 / 0.736 global, 0.976 / 0.984 standardized on each device). A
    feature that takes only 0 and 1 is a flag, as a bool split is: such a folder is standardized
    as before. Oracle: standardize_with_fleet of the folder as saved."""
    _an_age_beside(tmp_path / "ages", np.random.default_rng(0), top=1, columns=6)


def test_integer_tabular_data_with_one_column_above_127_is_not_taken_for_pixels(tmp_path):
    """An age 0..200 beside five counts 0..5 (no 0/1 flag), saved as int64, passed the 8-bit rule
    and was read as x / 255: the counts became 0..0.02. Pixels share one scale (most varying
    features reach above 127, SHARED_SCALE); here one feature in six does, so the folder is
    standardized on each device. Oracle: standardize_with_fleet of the folder as saved."""
    _an_age_beside(tmp_path / "counts", np.random.default_rng(1), top=5, columns=5)


def test_an_edge_pixel_that_is_1_once_does_not_make_pixels_flags(tmp_path):
    """Pixels at an image's edge can take only 0 and 1 over a folder (MNIST-5k: 1 in one of
    1,228 images), and FLAG_SHARE keeps them pixels. Oracle: as_features of the uint8 cast."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "edge"
    folder.mkdir()
    want = {}
    for i in range(3):  # 3 files of 60 examples: one 1 in 180
        x = np.column_stack([rng.integers(0, 256, (60, 5)), np.zeros(60)]).astype(np.float32)
        x[0, -1] = i == 0
        np.savez(folder / f"d{i}.npz", x_train=x[:50], y_train=np.arange(50) % 2, x_test=x[50:],
                 y_test=np.arange(10) % 2)
        want[f"d{i}"] = (as_features(x[:50].astype(np.uint8)), as_features(x[50:].astype(np.uint8)))
    data = load_npz_dir(folder, standardize=None)
    _same(data, want)
    assert data.standardizing.divided_by_255


def test_no_standardize_on_float_pixels_is_told_to_divide_them_by_255(tmp_path, caplog):
    """--no-standardize keeps float 0..255 pixels as saved, and the finding told the user to
    standardize each feature, which `fedge simulate --data` does 'on each device unless
    --no-standardize is given': false for 8-bit intensities, which auto reads as x / 255."""
    saved = _pixels(tmp_path / "f32")
    data = load_npz_dir(tmp_path / "f32", standardize=False)
    _same(data, {k: (v["x_train"], v["x_test"]) for k, v in saved.items()})
    assert data.standardizing.why == "--no-standardize" and not data.standardizing.divided_by_255
    (finding,) = [m for m in caplog.messages if "far from standardized" in m]
    assert "8-bit intensities" in finding and "divide them by 255" in finding
    assert "Standardize each feature" not in finding


@pytest.mark.parametrize("flag", [False, True], ids=["no-standardize", "standardize"])
def test_either_flag_on_float_pixels_beside_uint8_splits_says_their_scales_differ(tmp_path, caplog, flag):
    """x_train saved as uint8 (read as x / 255) beside x_test as float32 0..255: auto reads both
    as x / 255 and warns; either flag read the test split as saved, 255 times its training
    split's scale (standardized with x / 255's statistics under --standardize), as a real device
    does, without a word. Oracle: the devices' reading, as_features of each split as saved."""
    saved = _uint8_train_float_test(tmp_path / "mix")
    data = load_npz_dir(tmp_path / "mix", standardize=flag)
    read = {k: (as_features(v["x_train"]), as_features(v["x_test"])) for k, v in saved.items()}
    # two scales under --standardize: each device's own statistics (standardizing.resolve)
    _same(data, {c.client_id: (c.x_train, c.x_test) for c in standardize_per_device(replace(
        data, clients=tuple(replace(c, x_train=read[c.client_id][0], x_test=read[c.client_id][1])
                            for c in data.clients))).clients} if flag else read)
    (line,) = [m for m in caplog.messages if "beside splits saved as uint8" in m]
    assert ("--standardize" if flag else "--no-standardize") in line and "255 times" in line
    assert "save them as uint8" in line and not data.standardizing.divided_by_255


def test_a_device_following_the_warning_trains_on_what_auto_read(tmp_path):
    """Auto read float32 0..255 pixels as x / 255 and recorded config.standardize false; the
    warning tells real devices to save them as uint8 or divided by 255. A device with [data]
    standardize = false reading either file holds the simulator's features, bit for bit (and
    the file as saved would not). Oracle: the device's own loader."""
    from fedge.edge_runtime.device_config import load_local_data

    saved = _pixels(tmp_path / "f32", ("float32",) * 2)
    data = load_npz_dir(tmp_path / "f32", standardize=None)
    assert data.standardizing.divided_by_255 and not data.standardizing.on  # run.json: standardize false
    for c in data.clients:
        arrays = saved[c.client_id]
        for name, convert in (("u8", lambda x: x.astype(np.uint8)), ("div", lambda x: x / np.float32(255))):
            np.savez(tmp_path / f"{name}.npz", **{**arrays, "x_train": convert(arrays["x_train"]),
                                                 "x_test": convert(arrays["x_test"])})
            device = load_local_data(tmp_path / f"{name}.npz", standardize=False)
            assert device.x_train.tobytes() == c.x_train.tobytes() and device.x_test.tobytes() == c.x_test.tobytes()
        as_saved = load_local_data(tmp_path / "f32" / f"{c.client_id}.npz", standardize=False)
        assert not np.array_equal(as_saved.x_train, c.x_train)
