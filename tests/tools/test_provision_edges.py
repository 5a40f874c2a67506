"""tools/provision.py and shard_users.py at their documented edges (mutation6-transport): a device
id of exactly 64 characters, K = MAX_SHARDS shards, and the files fedge never replaces."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import MAX_SHARDS, shard_client_id
from fedge.tools import provision
from fedge.tools.broker.shard_users import is_shard_user, shard_users


def test_a_device_id_of_64_characters_is_the_longest():
    assert provision.validate_device_id("d" * provision.MAX_ID_LEN) == "d" * 64
    with pytest.raises(ConfigError, match="at most 64"):
        provision.validate_device_id("d" * 65)


def test_k_may_be_max_shards_and_no_more():
    users = shard_users(MAX_SHARDS)
    assert users == [shard_client_id(k) for k in range(MAX_SHARDS)] and users[-1] == f"fedge-shard-{MAX_SHARDS - 1}"
    assert all(is_shard_user(u) for u in users) and not is_shard_user(f"fedge-shard-{MAX_SHARDS}")
    for bad in (-1, MAX_SHARDS + 1):
        with pytest.raises(ConfigError, match="--shards"):
            shard_users(bad)


def test_a_dangling_link_where_a_broker_file_goes_is_refused_and_its_target_not_made(tmp_path):
    etc, target = tmp_path / "etc", tmp_path / "elsewhere" / "acl"
    etc.mkdir()
    (etc / "fedge.acl").symlink_to(target)
    with pytest.raises(ConfigError, match="fedge.acl"):
        provision.write_broker_files(etc)
    assert not target.exists() and not target.parent.exists()
    assert sorted(p.name for p in etc.iterdir()) == ["fedge.acl"]


def test_writing_the_broker_files_again_keeps_the_password_files_users(tmp_path):
    etc = tmp_path / "etc"
    provision.write_broker_files(etc)
    provision.provision_password("pi-1", etc / "passwd", tmp_path / "creds")
    users = (etc / "passwd").read_text()
    assert users.startswith("pi-1:$7$")
    provision.write_broker_files(etc)  # the same configs again: no change, and passwd is not emptied
    assert (etc / "passwd").read_text() == users


def test_a_workers_credentials_in_the_way_refuse_the_leaders_too_before_anything_is_written(tmp_path):
    from tests.tools.test_provision import _cli

    pytest.importorskip("cryptography")
    assert _cli("ca", "--out", str(tmp_path / "ca")) == 0
    out = tmp_path / "creds"
    out.mkdir()
    (out / f"{shard_client_id(1)}.toml").write_text("# worker 1's credentials, in use\n")
    with pytest.raises(ConfigError, match="fedge-shard-1.toml"):
        _cli("coordinator", "--cert", "--ca-dir", str(tmp_path / "ca"), "--out", str(out), "--shards", "2")
    assert sorted(p.name for p in out.iterdir()) == ["fedge-shard-1.toml"]


# The red-team pass of 2026-12-07: each below wrote files before it failed, or wrote a file the
# device then refused; each is refused now before the first write.

@pytest.mark.parametrize("hosts, said", [(["ok.lan", ""], "a host name is empty"), (["h" * 65], "<= 64"),
                                         (["ok.lan", "ü.lan"], "A-label")])
def test_a_server_host_no_certificate_takes_is_refused_before_the_broker_files(tmp_path, hosts, said):
    """It was cryptography's ValueError traceback, after the configs and the ACL were written."""
    from tests.tools.test_provision import _cli

    pytest.importorskip("cryptography")
    assert _cli("ca", "--out", str(tmp_path / "ca")) == 0
    with pytest.raises(ConfigError, match=said):
        _cli("broker", "--out", str(tmp_path / "etc"), "--ca-dir", str(tmp_path / "ca"),
             *[arg for host in hosts for arg in ("--host", host)])
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize("extra, said", [(["--url", "ftp://broker.lan"], "scheme must be mqtt:// or mqtts://"),
                                         (["--url", "mqtt://broker.lan:0"], "need mqtt://host:port"),
                                         (["--ca-dir", "{ca}"], "is not mqtts://")])  # the default mqtt:// url
def test_credentials_the_device_would_refuse_are_not_written(tmp_path, extra, said):
    """`--url ftp://x` (or a CA for an mqtt:// url) wrote a password entry and a credentials file
    whose [broker] table `fedge device run` refused."""
    from tests.tools.test_provision import _cli

    pytest.importorskip("cryptography")
    assert _cli("ca", "--out", str(tmp_path / "ca")) == 0
    for command in (["device", "--id", "pi-1"], ["coordinator"]):
        with pytest.raises(ConfigError, match=said):
            _cli(*command, "--passwd-file", str(tmp_path / "passwd"), "--out", str(tmp_path / "creds"),
                 *[a.replace("{ca}", str(tmp_path / "ca")) for a in extra])
    assert not (tmp_path / "passwd").exists() and not (tmp_path / "creds").exists()


def test_an_identity_directory_that_cannot_take_the_key_is_refused_before_the_key_is_written(tmp_path):
    """A directory file that is no JSON failed after <id>.identity was written: the retry then said
    "exists; pass --force". A symlink to nothing was replaced by the directory."""
    from tests.tools.test_provision import _cli

    pytest.importorskip("cryptography")
    notes, link = tmp_path / "notes.txt", tmp_path / "ids.json"
    notes.write_text("my notes\n")
    link.symlink_to(tmp_path / "nowhere.json")
    for directory, said in ((notes, "secagg directory"), (link, "is a symlink to .*, which does not exist")):
        with pytest.raises(ConfigError, match=said):
            _cli("identity", "--id", "pi-1", "--out", str(tmp_path / "keys"), "--directory", str(directory))
    assert not (tmp_path / "keys").exists() and notes.read_text() == "my notes\n"
    assert link.is_symlink() and not (tmp_path / "nowhere.json").exists()


@pytest.mark.parametrize("command", [["broker"], ["ejabberd"], ["device", "--id", "pi-1", "--passwd-file", "PASSWD"],
                                     ["ca"]], ids=["broker", "ejabberd", "device", "ca"])
@pytest.mark.parametrize("where", ["under-a-file", "dangling-link"])
def test_an_out_folder_that_cannot_be_made_is_a_named_refusal_before_anything_is_written(tmp_path, command, where):
    """--out under a file, or a symlink to nothing, was a bare NotADirectoryError or FileExistsError
    from the mkdir; now the output-folder check every other writing command makes (ForeignOutput)."""
    from fedge.models.output_dir import ForeignOutput
    from tests.tools.test_provision import _cli

    (tmp_path / "afile").write_text("the user's\n")
    (tmp_path / "link").symlink_to(tmp_path / "nothing")
    out = tmp_path / "afile" / "sub" if where == "under-a-file" else tmp_path / "link"
    args = [str(tmp_path / "passwd") if a == "PASSWD" else a for a in command]
    with pytest.raises(ForeignOutput, match="is a file, not a folder" if where == "under-a-file" else "symlink to"):
        _cli(*args, "--out", str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "link"] and not (tmp_path / "nothing").exists()
    assert (tmp_path / "afile").read_text() == "the user's\n"
