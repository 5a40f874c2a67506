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
from fedge.edge_runtime.kernel.secagg.identity_files import load_directory, load_identity
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
