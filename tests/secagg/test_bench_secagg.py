import json

from fedge.tools.bench.secagg import main, measure


def test_a_small_case_is_exact_and_reports_every_field(tmp_path):
    row = measure(30, 0.3, 8, 3000)
    for key in ("devices", "dropout_fraction", "bits", "dimension", "field_bits", "bytes_per_device",
                "floor_bytes_per_device", "plain_bytes_per_device", "device_cpu_seconds", "unmask_seconds", "exact"):
        assert key in row
    assert row["exact"] and row["field_bits"] == 8 + 5
    assert row["floor_bytes_per_device"] == (3000 * 13 + 7) // 8
    assert row["bytes_per_device"] > row["floor_bytes_per_device"] > row["plain_bytes_per_device"]
    out = tmp_path / "b.json"
    assert main(["--json", str(out), "--devices", "12", "--dropouts", "0,0.25", "--bits", "16",
                 "--dimension", "500"]) == 0
    assert [r["dropout_fraction"] for r in json.loads(out.read_text())["runs"]] == [0.0, 0.25]


def test_a_sparse_cohort_is_measured_with_packed_shares():
    """n = 300: the graph is sparse (k = 208 < 299), so 8-byte packed shares: the upload over the
    floor is under k x 48 bytes (plain 16-byte shares would cost 64 per neighbour), and exact."""
    row = measure(300, 0.3, 8, 200)
    assert row["packing"] == 2 and row["neighbours"] < 299 and row["exact"]
    overhead = row["bytes_per_device"] - row["floor_bytes_per_device"]
    assert row["neighbours"] * 40 <= overhead < row["neighbours"] * 48


def test_the_json_goes_into_a_folder_that_does_not_exist_yet(tmp_path):
    """`--json new/b.json` once ran every case and then stopped on FileNotFoundError, writing nothing."""
    out = tmp_path / "new" / "deeper" / "b.json"
    assert main(["--json", str(out), "--devices", "4", "--dropouts", "0", "--bits", "8", "--dimension", "10",
                 "--repeats", "1", "--seed", "7"]) == 0
    assert [r["devices"] for r in json.loads(out.read_text())["runs"]] == [4]
