"""The shipped ejabberd config with a sharded fleet's upload grants written in.

ejabberd, like Mosquitto (shard_users.py), gets one grant per shard,
fedge/v1/shard/k/devices/%u/update for each k < K, never shard/+: a device may leave a
retained message on every topic it may write, and a wildcard level would let it fill a node's
retained store with made-up shard topics. `fedge provision ejabberd --shards K` writes the
file; the test cluster (ejabberd.py) starts its nodes from the same text.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import shard_update_topic

from .shard_users import shard_users

MARKER = "      # (shard grants)\n"  # in access_publish of hardware/ejabberd/ejabberd.yml


def shipped_config() -> Path:
    """hardware/ejabberd/ejabberd.yml, as installed."""
    return Path(str(resources.files("fedge.hardware").joinpath("ejabberd", "ejabberd.yml")))


def ejabberd_config(shards: int = 0) -> str:
    """The shipped config, granting each device the upload topics of `shards` shards (none for 0)."""
    shard_users(shards)  # the range check (ConfigError), as for Mosquitto's ACL
    text = shipped_config().read_text(encoding="utf-8")
    if text.count(MARKER) != 1:
        raise ConfigError(f"{shipped_config()}: needs one {MARKER.strip()!r} line in access_publish")
    grants = "".join(f'      "{shard_update_topic(k, "%u")}":\n        - allow\n' for k in range(shards))
    return text.replace(MARKER, MARKER + grants)
