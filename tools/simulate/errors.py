"""Why a simulation cannot run. (Errors of the code it runs come from fedge.edge_runtime.kernel.errors.)

    FedgeError
    ├── FleetNotReady      not every simulated device checked in before the first round
    └── AttackError        a simulated attack cannot be built (bad parameters, nothing to collude on)
"""

from __future__ import annotations

from fedge.edge_runtime.kernel.errors import FedgeError


class FleetNotReady(FedgeError):
    reason = "fleet_not_ready"


class AttackError(FedgeError):
    reason = "attack"
