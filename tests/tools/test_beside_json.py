"""Files a command names after its --json (out.png beside out.json for `fedge simulate` and
`fedge bench privacy`, out.md and out.png for `fedge bench async`): the user named the JSON,
not them, so one that is there and is not fedge's makes the command refuse before it runs
(tools/beside_json.py), and a rerun into the same path still replaces fedge's own."""

from __future__ import annotations

import json

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.output_dir import ForeignOutput
from fedge.tools.beside_json import check_beside, png_metadata, png_software

SIMULATE = ["simulate", "--dataset", "digits", "--devices", "3", "--clients-per-round", "3", "--rounds", "1",
            "--quiet"]


def _plot(path, **metadata):
    plt = pytest.importorskip("matplotlib.pyplot")
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(path, metadata=metadata or None)
    plt.close(fig)


def test_the_software_chunk_is_read_from_a_real_png(tmp_path):
    _plot(tmp_path / "ours.png", **png_metadata("simulate"))
    _plot(tmp_path / "theirs.png")  # matplotlib's own Software chunk
    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 3)  # cut short
    (tmp_path / "notes.png").write_text("not a PNG at all")
    assert png_software(tmp_path / "ours.png") == "fedge simulate"
    assert png_software(tmp_path / "theirs.png").startswith("Matplotlib")
    assert png_software(tmp_path / "photo.png") is None
    assert png_software(tmp_path / "notes.png") is None
    assert png_software(tmp_path / "missing.png") is None


def test_simulate_refuses_a_png_it_did_not_write_before_it_runs(tmp_path, capsys):
    from fedge.tools.cli import main

    out = tmp_path / "run.json"
    (tmp_path / "run.png").write_bytes(b"the user's own chart")
    assert main([*SIMULATE, "--json", str(out)]) == 2
    assert "run.png" in capsys.readouterr().err
    assert (tmp_path / "run.png").read_bytes() == b"the user's own chart"
    assert not out.exists()  # refused before the run, not after it
    # A --plot the user names is theirs to replace; the default one beside --json is checked.
    assert main([*SIMULATE, "--json", str(out), "--plot", str(tmp_path / "chart.png")]) == 0
    assert (tmp_path / "run.png").read_bytes() == b"the user's own chart"


def test_simulate_replaces_its_own_plot_and_one_written_before_the_mark(tmp_path):
    pytest.importorskip("matplotlib")
    from fedge.tools.cli import main

    out = tmp_path / "run.json"
    assert main([*SIMULATE, "--json", str(out)]) == 0
    assert png_software(tmp_path / "run.png") == "fedge simulate"
    assert main([*SIMULATE, "--json", str(out)]) == 0  # its own, replaced
    _plot(tmp_path / "run.png")  # an unmarked plot (fedge before the mark) beside fedge's run JSON
    assert main([*SIMULATE, "--json", str(out)]) == 0
    assert png_software(tmp_path / "run.png") == "fedge simulate"


def test_a_json_path_that_names_the_plot_or_report_is_refused_before_the_run(tmp_path, capsys):
    """`fedge simulate --json out.png` wrote the run's JSON to out.png and then its plot over it
    ("wrote out.png and out.png"): the run was lost. Likewise --plot naming the --json file, and
    `fedge bench async --json a.md` (its Markdown report)."""
    from fedge.tools.bench.async_bench import main as bench_async
    from fedge.tools.cli import main

    assert main([*SIMULATE, "--json", str(tmp_path / "out.png")]) == 2
    assert "name a .json file" in capsys.readouterr().err
    assert main([*SIMULATE, "--json", str(tmp_path / "r.png"), "--plot", str(tmp_path / "r.png")]) == 2
    assert "both name" in capsys.readouterr().err
    with pytest.raises(ForeignOutput, match=r"a\.md"):
        bench_async(["--json", str(tmp_path / "a.md"), "--quick"])
    assert list(tmp_path.iterdir()) == []  # refused before anything ran or was written


def test_an_output_path_under_a_file_is_refused_before_the_run(tmp_path, capsys):
    """`--json notes.txt/run.json` ran the whole simulation, then failed to write it
    (FileExistsError); the privacy and async benchmarks did the same after their grids."""
    from fedge.tools.bench.privacy import PrivacyGrid, run
    from fedge.tools.cli import main

    (tmp_path / "notes.txt").write_text("mine")
    for flags in (["--json", str(tmp_path / "notes.txt" / "run.json")],
                  ["--plot", str(tmp_path / "notes.txt" / "deep" / "run.png")]):
        assert main([*SIMULATE, *flags]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in err
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run(PrivacyGrid(), tmp_path / "notes.txt" / "p.json", progress=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_bench_async_checks_its_markdown_and_plot_before_it_runs(tmp_path):
    from fedge.tools.bench.async_bench import main

    (tmp_path / "a.md").write_text("# Our async notes\n")
    with pytest.raises(ForeignOutput, match=r"a\.md"):
        main(["--json", str(tmp_path / "a.json"), "--quick"])
    assert (tmp_path / "a.md").read_text() == "# Our async notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.md"]


def test_the_privacy_bench_checks_its_plot_before_the_grid(tmp_path):
    from fedge.tools.bench.privacy import PrivacyGrid, run

    (tmp_path / "p.png").write_bytes(b"the user's own chart")
    with pytest.raises(ForeignOutput, match=r"p\.png"):
        run(PrivacyGrid(), tmp_path / "p.json", progress=lambda line: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_legacy_files_are_fedges_only_beside_the_same_commands_json(tmp_path):
    is_async = lambda doc: doc.get("benchmark") == "async"  # noqa: E731
    (tmp_path / "r.md").write_text("| an old table, no header |\n")
    with pytest.raises(ForeignOutput):
        check_beside(tmp_path / "r.json", (".md",), "fedge bench async", is_async)
    (tmp_path / "r.json").write_text(json.dumps({"schema": 1, "benchmark": "privacy"}))
    with pytest.raises(ForeignOutput):
        check_beside(tmp_path / "r.json", (".md",), "fedge bench async", is_async)
    (tmp_path / "r.json").write_text(json.dumps({"schema": 1, "benchmark": "async"}))
    check_beside(tmp_path / "r.json", (".md",), "fedge bench async", is_async)
    (tmp_path / "r.md").write_text("# fedge bench async: mnist, 1000 devices\n")  # marked: fedge's
    (tmp_path / "r.json").unlink()
    check_beside(tmp_path / "r.json", (".md",), "fedge bench async", is_async)


def test_a_link_in_the_way_is_refused_even_beside_fedges_json(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"schema": 1, "benchmark": "async"}))
    target = tmp_path / "elsewhere.md"
    target.write_text("# fedge bench async: looks like ours\n")
    (tmp_path / "r.md").symlink_to(target)
    with pytest.raises(ForeignOutput, match=r"r\.md"):
        check_beside(tmp_path / "r.json", (".md",), "fedge bench async", lambda doc: True)


def test_a_named_output_file_that_fedge_cannot_have_written_is_kept(tmp_path, capsys):
    """`--json README.md` or `--plot photo.png` replaced the user's file with the run's output:
    a named output file that exists must be a JSON document (for a PNG: one marked as fedge's)."""
    from fedge.tools.cli import main

    notes, photo, theirs = tmp_path / "notes.md", tmp_path / "photo.png", tmp_path / "old.json"
    notes.write_text("# my notes\n")
    photo.write_bytes(b"\x89PNG\r\n\x1a\n not fedge's")
    for flags in (["--json", str(notes)], ["--plot", str(photo)],
                  ["--json", str(theirs), "--plot", str(photo)]):
        assert main([*SIMULATE, *flags]) == 2
        assert "so fedge did not write it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # an argparse type: a usage error
        main(["bench", "async", "--quick", "--json", str(notes)])
    assert exit_.value.code == 2 and "so fedge did not write it" in capsys.readouterr().err
    assert notes.read_text() == "# my notes\n" and photo.read_bytes().endswith(b"not fedge's")
    assert not theirs.exists()
    # A JSON document there may be an earlier run's: a rerun into the same --json replaces it.
    theirs.write_text(json.dumps({"earlier": "run"}))
    assert main([*SIMULATE, "--json", str(theirs), "--plot", str(tmp_path / "run.png")]) == 0
    assert "rounds" in json.loads(theirs.read_text())


def test_a_plot_fedge_wrote_can_be_named_again(tmp_path):
    """`fedge audit leakage --png p.png` twice: its plot carried no mark, so the rerun was refused as
    a file fedge did not write; and a marked plot named `.PNG` (allowed by simulate's --plot and
    the audit's --png) was read as a JSON document and refused the same way."""
    import numpy as np

    from fedge.tools.audit.leakage import _draw
    from fedge.tools.beside_json import output_file_problem

    pytest.importorskip("matplotlib")
    pair = (np.zeros(784), np.ones(784))
    for name in ("leak.png", "LEAK.PNG"):
        _draw(str(tmp_path / name), {(1, 1, 1): [pair]})
        assert png_software(tmp_path / name) == "fedge audit leakage"
        assert output_file_problem(tmp_path / name) is None
    _plot(tmp_path / "run.PNG", **png_metadata("simulate"))
    assert output_file_problem(tmp_path / "run.PNG") is None


def test_a_named_output_that_is_no_regular_file_is_refused(tmp_path, capsys):
    """`--json /dev/null` (or a FIFO, a socket) passed the output check, and the run's write
    (atomic_write_bytes: a temp file renamed over the path) replaced the node with a regular file:
    as root, /dev/null itself. A FIFO stands in for the device here."""
    import os

    from fedge.tools.beside_json import output_file_problem
    from fedge.tools.cli import main

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert "not a regular file" in output_file_problem(fifo)
    with pytest.raises(SystemExit) as exit_:  # an argparse type: a usage error, nothing run
        main(["bench", "screening", "--json", str(fifo)])
    assert exit_.value.code == 2 and "not a regular file" in capsys.readouterr().err
    assert fifo.is_fifo()
