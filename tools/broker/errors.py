"""Errors raised while running or provisioning a Mosquitto broker.

    FedgeError                    (fedge.edge_runtime.kernel.errors)
    └── BrokerError               a local Mosquitto could not be used
        ├── BrokerUnavailable     no mosquitto binary on this machine (apt-get install mosquitto)
        └── BrokerStartFailed     it exited or did not accept connections in time; the
                                  message carries the tail of the broker's log

Bad provisioning input (an invalid device id, a key that would be overwritten) is a
ConfigError from fedge.edge_runtime.kernel.errors: it is the operator's input that is wrong.
"""

from __future__ import annotations

from fedge.edge_runtime.kernel.errors import FedgeError


class BrokerError(FedgeError):
    reason = "broker"


class BrokerUnavailable(BrokerError):
    reason = "broker_unavailable"


class BrokerStartFailed(BrokerError):
    reason = "broker_start_failed"
