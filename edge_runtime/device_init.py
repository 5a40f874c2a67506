"""`fedge device init`: a commented device.toml that loads as written.

Every default shown comes from the dataclasses it documents (EligibilityPolicy, AgentConfig,
ProbeConfig), so the file and the code cannot drift apart; a test loads the output."""

from __future__ import annotations

import json
from pathlib import Path

from .device_config import AgentConfig, DataConfig, DeviceConfig, ProbeConfig
from .eligibility import EligibilityPolicy
from .kernel.configfile import from_dict, tomllib  # tomli on 3.10
from .kernel.errors import ConfigError
from .kernel.files import atomic_write_bytes


def _q(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's (a quote or backslash once broke the file)."""
    return json.dumps(text, ensure_ascii=False)


def device_toml(device_id: str, broker_url: str, data_npz: str, state_dir: str) -> str:
    p, a, pr, d = EligibilityPolicy(), AgentConfig(), ProbeConfig(), DataConfig()
    links = ", ".join(f'"{link}"' for link in p.allowed_links)
    return f'''# fedge device configuration: `fedge device run --config THIS_FILE`.
# Unknown keys are errors, so a typo is caught at start-up. Written by `fedge device init`.

device_id = {_q(device_id)}        # must equal the broker username: the broker's ACL keys topics on it
state_dir = {_q(state_dir)}        # personal head, optimizer state, pending uploads, fetched models
backend = "auto"                 # auto | portable | ort-training | numpy

[broker]
url = {_q(broker_url)}             # mqtt://host:1883 (a password) or mqtts://host:8883 (TLS)
# `fedge provision device --id {device_id} ...` writes these for you:
# username = "{device_id}"
# password = "..."
# ca_file = "/etc/fedge/ca.crt"     # TLS: the broker's CA
# cert_file = "/etc/fedge/{device_id}.crt"  # mutual TLS: this device's certificate
# key_file = "/etc/fedge/{device_id}.key"

[data]
npz = {_q(data_npz)}               # x_train, y_train, x_test, y_test (`fedge data split` makes some);
                                 # after replacing it: systemctl reload fedge-device (SIGHUP)
standardize = {str(d.standardize).lower()}              # true: (x - mean) / std with this device's own training
                                 # statistics (or statistics', below); alike on every device (simulate's
                                 # run.json: config.standardize;
                                 # where its config.divided_by_255 is true, save float pixels 0..255 as uint8)
# statistics = "/var/lib/fedge/fleet_statistics.npz"  # with standardize: the fleet's pooled mean/std instead of
                                 # this device's own, which under label skew follow its labels (README)

[eligibility]                    # when this device may train; defaults shown
min_battery_percent = {p.min_battery_percent:g}       # a battery below this blocks, even while charging
require_charging = {str(p.require_charging).lower()}        # true: train only on external power
allow_metered = {str(p.allow_metered).lower()}           # false: never on a metered (or cellular) link
allowed_links = [{links}]
max_temperature_c = {p.max_temperature_c:g}         # hottest thermal zone
min_cpu_idle_percent = {p.min_cpu_idle_percent:g}      # before a task only; low so a device that also does other
                                 # work still trains; raise it if that work must never share the CPU
min_free_memory_mb = {p.min_free_memory_mb:g}
# window = "01:00-06:00"         # local time; may wrap midnight

[probe]
root = "{pr.root}"                       # where sysfs/procfs are read
check_interval_s = {pr.check_interval_s:g}           # during training, facts are re-read at most this often

[agent]
checkin_s = {a.checkin_s:g}                   # check in this often unless the coordinator paces the device
republish_s = {a.republish_s:g}                 # resend unacknowledged updates this often
fetch_timeout_s = {a.fetch_timeout_s:g}
learn_upload_rate = {str(a.learn_upload_rate).lower()}         # time each upload to its Ack and stop training that
                                 # long before a deadline; false: upload_latency_s + bytes / upload_bytes_per_s
'''


def write_device_toml(path: str | Path, *, device_id: str, broker_url: str, data_npz: str, state_dir: str,
                      force: bool = False) -> Path:
    """Write the template; an existing file is the user's and is kept unless force."""
    path = Path(path)
    if path.is_dir():  # "exists; pass --force", and --force then failed with IsADirectoryError
        raise ConfigError(f"--out {path} is a folder; name the device config file to write, "
                          f"e.g. {path / 'device.toml'}")
    if (path.exists() or path.is_symlink()) and not force:  # a link to nothing: the write replaced the link
        raise ConfigError(f"{path} exists; edit it, or pass --force to replace it")
    text = device_toml(device_id, broker_url, data_npz, state_dir)
    # what `fedge device run` would refuse (an id with '/', a broker url without mqtt://, a quote
    # that broke the TOML) is refused here, not written
    try:
        from_dict(DeviceConfig, tomllib.loads(text), "device init")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"device init: --id, --broker, --data or --state-dir makes no valid TOML ({exc})") from None
    atomic_write_bytes(path, text.encode())
    return path
