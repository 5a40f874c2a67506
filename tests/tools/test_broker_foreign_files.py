"""A broker's work folder may hold files fedge did not write (a folder the operator named, one
`fedge provision broker-files` filled and they edited): write_config and MosquittoProcess keep
them byte-identical and refuse by name, as provision does; fedge's own earlier render (another
port, another run) is replaced."""

from __future__ import annotations

import dataclasses

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.broker.config import ACL_NAME, BrokerConfig, acl_text, render_config, write_config
from fedge.tools.broker.errors import ForeignFile
from fedge.tools.broker.process import MosquittoProcess

OPERATORS = b"# the operator's own broker\nlistener 1883\nallow_anonymous false\n"


def _secured(tmp_path, port: int = 2000) -> BrokerConfig:
    return BrokerConfig(port=port, data_dir=str(tmp_path / "data"), password_file=str(tmp_path / "passwd"))


@pytest.mark.parametrize("name", ["mosquitto.conf", ACL_NAME])
def test_a_foreign_file_by_a_written_name_is_kept_and_refused_and_nothing_is_written(tmp_path, name):
    (tmp_path / name).write_bytes(OPERATORS)
    with pytest.raises(ForeignFile, match=f"{tmp_path / name} already exists with other content") as caught:
        write_config(_secured(tmp_path), tmp_path)
    assert isinstance(caught.value, ConfigError) and caught.value.reason == "foreign_file"
    assert (tmp_path / name).read_bytes() == OPERATORS
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # the other file was not written either


def test_a_link_by_the_configs_name_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "elsewhere.conf"
    target.write_bytes(OPERATORS)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mosquitto.conf").symlink_to(target)
    with pytest.raises(ForeignFile):
        write_config(BrokerConfig(port=2000, data_dir=str(tmp_path)), tmp_path / "work")
    assert target.read_bytes() == OPERATORS


def test_fedges_own_earlier_render_is_replaced(tmp_path):
    """MosquittoProcess writes its config again at each start and each port it tries."""
    first = write_config(_secured(tmp_path, 2000), tmp_path)
    again = write_config(_secured(tmp_path, 2001), tmp_path)
    assert again == first and again.read_text() == render_config(_secured(tmp_path, 2001), str(tmp_path / ACL_NAME))
    assert (tmp_path / ACL_NAME).read_text() == acl_text()


@pytest.mark.parametrize("edit", [
    lambda text: text + "log_type all\n",
    lambda text: text.replace("max_queued_messages", "max_queued_messages 1\n#", 1),
    lambda text: "\n".join(text.split("\n")[:1] + text.split("\n")[2:]),
], ids=["line-added", "line-changed", "digest-line-dropped"])
def test_fedges_render_edited_by_the_operator_is_theirs_and_kept(tmp_path, edit):
    """Under fedge's header, an edited render is the operator's file: a later write_config (another
    port) refuses by name and leaves it byte-identical, where an unedited one is replaced."""
    write_config(_secured(tmp_path, 2000), tmp_path)
    conf = tmp_path / "mosquitto.conf"
    edited = edit(conf.read_text()).encode()
    assert edited != conf.read_bytes()
    conf.write_bytes(edited)
    with pytest.raises(ForeignFile, match="mosquitto.conf already exists with other content"):
        write_config(_secured(tmp_path, 2001), tmp_path)
    assert conf.read_bytes() == edited


def test_fedges_acl_for_another_shard_count_is_replaced_and_an_edited_one_kept(tmp_path):
    """A work folder reused with another --shards holds fedge's own ACL of K = 3; one rule added
    by hand makes it the operator's."""
    write_config(dataclasses.replace(_secured(tmp_path), shards=3), tmp_path)
    assert (tmp_path / ACL_NAME).read_text() == acl_text(3)
    write_config(_secured(tmp_path), tmp_path)
    assert (tmp_path / ACL_NAME).read_text() == acl_text(0)
    edited = (acl_text(2) + "user fedge-shard-2\ntopic read #\n").encode()
    (tmp_path / ACL_NAME).write_bytes(edited)
    with pytest.raises(ForeignFile):
        write_config(_secured(tmp_path), tmp_path)
    assert (tmp_path / ACL_NAME).read_bytes() == edited


@pytest.mark.parametrize("from_text", [False, True])
def test_mosquitto_process_refuses_before_it_starts_anything(tmp_path, from_text):
    (tmp_path / "mosquitto.conf").write_bytes(OPERATORS)
    broker = (MosquittoProcess.from_text("listener 2000\n", 2000, workdir=tmp_path, binary="/nonexistent")
              if from_text else MosquittoProcess(BrokerConfig(persistence=False), workdir=tmp_path,
                                                 binary="/nonexistent"))
    with pytest.raises(ForeignFile), broker:
        pass
    assert (tmp_path / "mosquitto.conf").read_bytes() == OPERATORS and tmp_path.is_dir()



def test_a_work_folder_fedge_cannot_make_is_a_config_error_naming_it(tmp_path):
    """Below a regular file (root ignores permission bits, so this is the OSError CI can reach)."""
    (tmp_path / "a-file").write_bytes(OPERATORS)
    folder = tmp_path / "a-file" / "broker"
    with pytest.raises(ConfigError, match="cannot write the broker's config into .*a-file/broker"):
        write_config(_secured(tmp_path), folder)
    assert (tmp_path / "a-file").read_bytes() == OPERATORS


def test_a_huge_file_by_a_written_name_is_refused_unread(tmp_path, monkeypatch):
    """A stray 4 GiB file (sparse here) is foreign by its size alone; fedge never reads it in."""
    conf = tmp_path / "mosquitto.conf"
    with conf.open("wb") as f:
        f.truncate(4 << 30)
    reads = []
    monkeypatch.setattr(type(conf), "read_bytes", lambda self: reads.append(self) or b"")
    with pytest.raises(ForeignFile, match="mosquitto.conf already exists with other content"):
        write_config(_secured(tmp_path), tmp_path)
    assert reads == [] and conf.stat().st_size == 4 << 30
