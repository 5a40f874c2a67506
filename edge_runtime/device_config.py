"""Device configuration (`fedge device run --config device.toml`).

    device_id = "pi-007"               # must match the broker username (the ACL keys on it)
    state_dir = "/var/lib/fedge"        # personal head, optimizer state, residual, pending uploads, models
    backend = "auto"

    [broker]                            # edge_runtime.transport.mqtt.MqttSettings
    url = "mqtts://coordinator.lan:8883"
    ca_file = "/etc/fedge/ca.pem"
    cert_file = "/etc/fedge/pi-007.pem"
    key_file = "/etc/fedge/pi-007.key"

    [data]
    npz = "/var/lib/fedge/data.npz"     # arrays x_train, y_train, x_test, y_test
    standardize = false                 # true: (x - mean) / std with this device's own training statistics;
                                        # the same on every device of a fleet (`fedge simulate --data`'s
                                        # run.json: config.standardize; its auto standardizing = true;
                                        # config.divided_by_255 = true: save float pixels 0..255 as uint8)
    statistics = ""                     # with standardize: the fleet's pooled mean/std file instead of
                                        # this device's own (`fedge data combine-moments`; fleet_statistics.py)

    [eligibility]                       # edge_runtime.eligibility.EligibilityPolicy
    min_battery_percent = 40

    [probe]
    root = "/"                          # where sysfs/procfs are read

    [agent]
    checkin_s = 60

    [secagg]                            # secure aggregation: `fedge provision identity` writes both
    identity_file = "/etc/fedge/pi-007.identity"     # this device's Ed25519 key (signs its round keys)
    directory_file = "/etc/fedge/identities.json"    # every device's identity public key

    [privacy]
    own_noise_multiplier = 0.1          # decline tasks that add less noise on the device (0 = off)
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from .data_file import read_data_npz
from .device import LocalData
from .eligibility import EligibilityPolicy
from .examples import LayoutCheck, check_split
from .fleet_statistics import load_fleet_statistics
from .kernel.backends import BACKENDS
from .kernel.configfile import load_config
from .kernel.errors import ConfigError, DatasetError
from .kernel.features import feature_statistics
from .kernel.features import standardize as standardize_features
from .kernel.protocol import DEVICE_MAX_TASK_S
from .kernel.transport.settings import MqttSettings
from .kernel.wire_fields import I64, bounded
from .split_scale import describe, scale_gap
from .standardization_record import Statistics
from .upload_margin import UploadLink

log = logging.getLogger("fedge.device")


@dataclass(frozen=True)
class DataConfig:
    npz: str = ""  # one file with x_train, y_train, x_test, y_test
    # True: the device standardizes x_train and x_test with its own training split's per-feature
    # mean and std at start and at each SIGHUP reload (kernel/features.py; a statistic of its data
    # never leaves it), and `fedge device export` puts the same affine in front of its model. A
    # fleet trains one model: set it alike on every device. `fedge simulate --data` records which
    # setting its run used in run.json's config.standardize (auto standardized: true on every device;
    # where auto read float pixels 0..255 as x / 255, config.divided_by_255, it is false and the
    # devices' files must hold those pixels as uint8, which as_features reads as x / 255, or divided).
    standardize: bool = False
    # With standardize: an .npz of the fleet's pooled training mean and std (fleet_statistics.py),
    # applied instead of this device's own: under label skew its own follow its label mix. "" = off.
    statistics: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.standardize, bool):  # the TOML loader checks it too; Python callers may not
            raise ConfigError(f"standardize must be true or false, got {self.standardize!r}")
        if self.statistics and not self.standardize:  # a file that would silently do nothing
            raise ConfigError(f"data.statistics = {self.statistics!r} needs data.standardize = true: the statistics "
                              "are what the device standardizes with; set standardize = true, or remove statistics")


@dataclass(frozen=True)
class ProbeConfig:
    root: str = "/"
    check_interval_s: float = 0.5  # during training, facts are re-read at most this often (seconds)

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigError("probe.root must name a folder ('/' on the device itself)")
        _check_positive("probe", self, ("check_interval_s",))


@dataclass(frozen=True)
class AgentConfig:
    checkin_s: float = 60.0  # check in this often unless the coordinator paces us (seconds)
    republish_s: float = 10.0  # resend unacknowledged updates this often (seconds)
    fetch_timeout_s: float = 300.0  # give up a model download after this (seconds)
    poll_s: float = 0.2
    max_task_s: float = DEVICE_MAX_TASK_S  # stop training one task after this, whatever deadline it names (seconds)
    max_pace_s: float = 86400.0  # check in at least this often, whatever the coordinator paces (seconds)
    # Training stops this long before a task's deadline, plus the update's bytes over the rate, so
    # that its upload lands in time (at most half the deadline; upload_margin.py says why).
    upload_latency_s: float = UploadLink.latency_s
    upload_bytes_per_s: float = UploadLink.bytes_per_s
    # true: the rate is learned from timed uploads, upload_bytes_per_s its start and clamp (uplink_rate.py)
    learn_upload_rate: bool = True

    def __post_init__(self) -> None:
        _check_positive("agent", self, ("checkin_s", "republish_s", "fetch_timeout_s", "poll_s", "max_task_s",
                                         "max_pace_s"))
        self.upload_link()  # refuses a bad one by name

    def upload_link(self) -> UploadLink:
        return UploadLink(self.upload_latency_s, self.upload_bytes_per_s, self.learn_upload_rate)


def _check_positive(table: str, cfg, names: tuple[str, ...]) -> None:
    for name in names:
        if not 0 < getattr(cfg, name) < math.inf:  # also refuses NaN
            raise ConfigError(f"{table}.{name} must be a positive number of seconds, got {getattr(cfg, name)!r}")


@dataclass(frozen=True)
class SecAggDeviceConfig:
    identity_file: str = ""  # without it the device's key advertisements are unsigned
    directory_file: str = ""  # without it neighbours' keys are not checked: a coordinator could substitute them

    def __post_init__(self) -> None:
        if bool(self.identity_file) != bool(self.directory_file):
            raise ConfigError("secagg.identity_file and directory_file go together: give both, or neither")


@dataclass(frozen=True)
class DevicePrivacyConfig:
    # The least noise this device adds itself to every update it sends, per unit of that update's
    # L2 bound (distributed DP; secagg_participant.own_noise_multiplier). With it, the
    # device declines (dp_noise_below_floor) plain tasks, central-DP tasks and secure
    # aggregation without DP, whose noise it cannot check, and distributed-DP rounds that
    # announce less. Its guarantee then holds whatever the coordinator announces: against a
    # coordinator and every other device colluding, this device's update is a Gaussian
    # mechanism of multiplier >= this. 0 (the default): off, the device adds what it is told.
    own_noise_multiplier: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.own_noise_multiplier < math.inf:  # also refuses NaN
            raise ConfigError("privacy.own_noise_multiplier must be >= 0 and finite, "
                              f"got {self.own_noise_multiplier!r}")


@dataclass(frozen=True)
class DeviceConfig:
    device_id: str
    state_dir: str = "fedge-state"
    backend: str = "auto"
    seed: int = bounded(0, I64[1], 0)  # numpy refuses a negative one (device.py seeds each task with it)
    broker: MqttSettings = field(default_factory=MqttSettings)
    data: DataConfig = field(default_factory=DataConfig)
    eligibility: EligibilityPolicy = field(default_factory=EligibilityPolicy)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    secagg: SecAggDeviceConfig = field(default_factory=SecAggDeviceConfig)
    privacy: DevicePrivacyConfig = field(default_factory=DevicePrivacyConfig)

    def __post_init__(self) -> None:
        if not self.device_id or any(c in self.device_id for c in "/+#\0\\") or self.device_id == "coordinator":
            raise ConfigError(f"device_id {self.device_id!r}: non-empty, no / \\ + # NUL, and not 'coordinator'")
        if not self.state_dir:  # "" would be the folder the device was started in
            raise ConfigError("state_dir must name a folder (the device's own state is kept under it)")
        if self.device_id in (".", ".."):  # it names the device's state folder: never state_dir or its parent
            raise ConfigError(f"device_id {self.device_id!r} cannot name a folder")
        if self.broker.username and self.broker.username != self.device_id:
            raise ConfigError(f"broker.username {self.broker.username!r} must equal device_id {self.device_id!r}: "
                              "the broker uses the username as client id and the ACL keys topics on it")
        if self.backend != "auto" and self.backend not in BACKENDS:  # once refused only when a task came
            raise ConfigError(f"backend {self.backend!r}: choose auto or one of {', '.join(BACKENDS)}")
        if not self.data.npz:
            raise ConfigError("data.npz = PATH is required: the device's own examples (x_train, y_train, x_test, "
                              "y_test)")


def load_device_config(path: str | Path) -> DeviceConfig:
    return load_config(DeviceConfig, path)


def load_local_data(path: str | Path, standardize: bool = False, statistics: str | Path = "") -> LocalData:
    """The device's own examples from `path`, checked; standardize ([data] standardize): both
    splits standardized with x_train's per-feature statistics (taken after uint8 / 255), or with
    the fleet's from the file `statistics` ([data] statistics) where one is named."""
    return read_local_data(path, standardize, statistics)[0]


def read_local_data(path: str | Path, standardize: bool = False,
                    statistics: str | Path = "") -> tuple[LocalData, Statistics | None]:
    """load_local_data, and the (mean, std) it standardized with (None without standardize). Warns
    in one line when x_test is on another scale than x_train (split_scale.py)."""
    path = Path(path)
    arrays = read_data_npz(path)
    # What the device would otherwise find out mid-task, refused at start and at a SIGHUP reload.
    # The label range against the model's classes is the task's to check: the model comes later.
    x_train, y_train = check_split(path, "train", arrays["x_train"], arrays["y_train"])
    x_test, y_test = check_split(path, "test", arrays["x_test"], arrays["y_test"], x_train.shape[1:])
    layouts = LayoutCheck()  # each split is reshaped to the model's input: (n, 2, 32) beside (n, 32, 2) fit alike
    for split, x in (("train", x_train), ("test", x_test)):
        layouts.check(path, split, x)
    if len(y_train) == 0:
        raise DatasetError(f"{path}: x_train/y_train hold no examples; the device has nothing to train on")
    gap = scale_gap(x_train, x_test)  # as saved (uint8 / 255): standardizing both alike keeps a gap
    if gap is not None:  # a warning, not a refusal: the owner may have reasons, and training is unaffected
        log.warning("%s: %s", path, describe(gap))
    stats = None
    if standardize:
        if statistics:
            mean, std = stats = load_fleet_statistics(statistics, x_train.shape[1:])
            source = f"the fleet's mean and std from {statistics} ([data] statistics)"
        else:
            mean, std = stats = feature_statistics(x_train)
            source = "this device's own training mean and std"
        x_train, x_test = (standardize_features(x, mean, std, f"{path}: {xs} ([data] standardize = true)")
                           for x, xs in ((x_train, "x_train"), (x_test, "x_test")))
        log.info("%s: standardized its %d features with %s ([data] standardize = true)", path, mean.size, source)
    return LocalData(x_train, y_train, x_test, y_test), stats

