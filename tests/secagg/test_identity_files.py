"""`fedge provision identity` writes a device's Ed25519 key and adds its public key to the
fleet's directory; a device config's [secagg] table hands both to the agent."""

import json
import stat
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime.device_config import DataConfig, DeviceConfig, SecAggDeviceConfig, load_device_config
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.secagg import identity
from fedge.edge_runtime.kernel.secagg.identity_files import add_to_directory, load_directory, load_identity
from fedge.edge_runtime.run import secagg_credentials
from fedge.tools.cli import main
from fedge.tools.provision import run


def test_provisioned_identities_sign_and_verify(tmp_path):
    directory = tmp_path / "etc" / "identities.json"
    for device in ("pi-a", "pi-b"):
        assert main(["provision", "identity", "--id", device, "--out", str(tmp_path / "creds"),
                     "--directory", str(directory)]) == 0
    key_file = tmp_path / "creds" / "pi-a.identity"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    keys = load_directory(directory)
    assert set(keys) == {"pi-a", "pi-b"} and set(json.loads(directory.read_text())) == {"pi-a", "pi-b"}
    msg = identity.transcript(1, "pi-a", bytes(32), bytes(32), "ab" * 32)
    assert identity.verify(keys["pi-a"], identity.sign(load_identity(key_file), msg), msg)
    assert not identity.verify(keys["pi-b"], identity.sign(load_identity(key_file), msg), msg)
    with pytest.raises(ConfigError, match="--force"):  # an identity is not replaced by accident
        run(SimpleNamespace(provision="identity", device_id="pi-a", out=str(tmp_path / "creds"),
                            directory=str(directory), force=False))


def test_the_device_config_hands_key_and_directory_to_the_agent(tmp_path):
    assert main(["provision", "identity", "--id", "pi-a", "--out", str(tmp_path), "--directory",
                 str(tmp_path / "ids.json")]) == 0
    np.savez(tmp_path / "data.npz", x_train=np.zeros((2, 3)), y_train=np.zeros(2), x_test=np.zeros((1, 3)),
             y_test=np.zeros(1))
    (tmp_path / "device.toml").write_text(f'''device_id = "pi-a"
[data]
npz = "{tmp_path / 'data.npz'}"
[secagg]
identity_file = "{tmp_path / 'pi-a.identity'}"
directory_file = "{tmp_path / 'ids.json'}"
''')
    private, directory = secagg_credentials(load_device_config(tmp_path / "device.toml"))
    assert len(private) == 32 and set(directory) == {"pi-a"}
    assert secagg_credentials(DeviceConfig("pi-a", data=DataConfig(npz="x"))) == (None, None)
    with pytest.raises(ConfigError, match="both"):
        SecAggDeviceConfig(identity_file="x")


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_an_empty_directory_file_is_said_to_be_empty(tmp_path, content):
    """Device and coordinator share this loader; an empty file was reported as JSON's own
    "Expecting value: line 1 column 1 (char 0)", which does not say what is wrong."""
    path = tmp_path / "identities.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=rf"^secagg directory {path} is empty: ") as caught:
        load_directory(path)
    assert "Expecting value" not in str(caught.value)


def test_the_coordinator_says_at_start_how_many_identities_its_directory_holds(tmp_path, caplog, monkeypatch):
    from fedge.coordinator.secagg import config as secagg_config

    monkeypatch.setattr(secagg_config, "_PRELOADED", {})  # the start's map, this test's alone
    directory = tmp_path / "ids.json"
    for device in ("pi-a", "pi-b", "pi-c"):  # as `fedge provision identity` adds them (its CLI sets up logging)
        add_to_directory(directory, device, identity.generate_identity()[1])
    sa = secagg_config.SecAggConfig(enabled=True, clip_range=0.5, directory_file=str(directory))
    with caplog.at_level("INFO", logger="fedge.coordinator"):
        secagg_config.preload_identities(sa)
    said = [r for r in caplog.records if r.name == "fedge.coordinator" and r.levelname == "INFO"]
    assert [r.getMessage() for r in said] == [f"coordinator: identity directory {directory}: 3 identities"]
    caplog.clear()
    with caplog.at_level("INFO", logger="fedge.coordinator"):  # no directory: nothing read, nothing said
        secagg_config.preload_identities(secagg_config.SecAggConfig(enabled=True, clip_range=0.5))
    assert not [r for r in caplog.records if "identity directory" in r.getMessage()]
