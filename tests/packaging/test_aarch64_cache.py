"""The arm64 userland's cache (aarch64_rootfs.cached_rootfs): built once, reused, rebuilt for a
new layout, and never deleting a folder that fedge did not create. The build itself is the slow
test's (test_aarch64.py); here it is replaced by one that writes a file."""

from __future__ import annotations

import json

import pytest

from tests.packaging import aarch64_rootfs
from tests.packaging.aarch64_rootfs import BUILDING, STAMP, cached_rootfs


@pytest.fixture
def builds(monkeypatch) -> list:
    done = []

    def fake_build(rootfs):
        rootfs.mkdir(parents=True)
        (rootfs / "built").write_text(str(len(done)))
        done.append(rootfs)

    monkeypatch.setattr(aarch64_rootfs, "_build", fake_build)
    return done


def test_the_userland_is_built_once_and_then_reused(tmp_path, builds):
    first = cached_rootfs(tmp_path / "cache")
    again = cached_rootfs(tmp_path / "cache")
    assert first == again == tmp_path / "cache" / "rootfs"
    assert len(builds) == 1 and (first / "built").read_text() == "0"
    assert not (tmp_path / "cache" / BUILDING).exists()
    assert not (tmp_path / "cache.building").exists()


def test_a_cache_of_another_layout_is_rebuilt(tmp_path, builds):
    cached_rootfs(tmp_path / "cache")
    stamp = tmp_path / "cache" / STAMP
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "layout": -1}))
    assert (cached_rootfs(tmp_path / "cache") / "built").read_text() == "1"


def test_a_folder_fedge_did_not_create_is_left_alone(tmp_path, builds):
    theirs = tmp_path / "cache"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="fedge did not"):
        cached_rootfs(theirs)
    (tmp_path / "fresh.building").mkdir()  # nor is a build folder without fedge's marker
    with pytest.raises(FileExistsError, match="fedge did not"):
        cached_rootfs(tmp_path / "fresh")
    assert (tmp_path / "fresh.building").is_dir()
    assert (theirs / "keep.txt").read_text() == "mine" and builds == []


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    def failing_build(rootfs):
        rootfs.mkdir(parents=True)
        raise RuntimeError("debootstrap failed")

    monkeypatch.setattr(aarch64_rootfs, "_build", failing_build)
    with pytest.raises(RuntimeError):
        cached_rootfs(tmp_path / "cache")
    assert sorted(tmp_path.iterdir()) == []
