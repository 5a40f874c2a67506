"""Errors raised while running or provisioning a Mosquitto broker.

    FedgeError                    (fedge.edge_runtime.kernel.errors)
    └── BrokerError               a local Mosquitto could not be used
        ├── BrokerUnavailable     no mosquitto binary on this machine (apt-get install mosquitto)
        └── BrokerStartFailed     it exited or did not accept connections in time; the
                                  message carries the tail of the broker's log

Bad provisioning input (an invalid device id, a key that would be overwritten) is a
ConfigError from fedge.edge_runtime.kernel.errors: it is the operator's input that is wrong.

    ConfigError                   (fedge.edge_runtime.kernel.errors)
    ├── ReservedUsername          a device id that names a coordinator process's broker user
    │                             (`coordinator`, or fedge-shard-N: the ACL's pattern lines
    │                             would give that device their topics, and the broker its
    │                             client id)
    └── ForeignFile               a file fedge would write is there already with other content
                                  (the operator's config or ACL, a link): left as it is
                                  (foreign.py)
"""

from __future__ import annotations

from fedge.edge_runtime.kernel.errors import ConfigError, FedgeError


class BrokerError(FedgeError):
    reason = "broker"


class BrokerUnavailable(BrokerError):
    reason = "broker_unavailable"


class BrokerStartFailed(BrokerError):
    reason = "broker_start_failed"


class ReservedUsername(ConfigError):
    reason = "reserved_username"


class ForeignFile(ConfigError):
    reason = "foreign_file"
