"""Why a robust aggregation rule cannot run.

    FedgeError                  (fedge.edge_runtime.kernel.errors: the one root)
    └── RobustError             bad inputs to a rule: not a (k, d) matrix, NaN, k = 0
        ├── BadRobustParameter  a parameter out of its range (beta, tau, bucket size, ...);
        │                       also a ConfigError, so a bad [robust] table reads as one
        └── TooManyByzantine    the rule cannot tolerate f (or beta * k) faulty inputs out of k

TooManyByzantine is raised at aggregation time, not only at config time: a round that closes
at its quorum can have fewer reports than the f the rule was configured for.
"""

from __future__ import annotations

from fedge.edge_runtime.kernel.errors import ConfigError, FedgeError


class RobustError(FedgeError):
    reason = "robust_input"


class BadRobustParameter(RobustError, ConfigError):
    reason = "robust_parameter"


class TooManyByzantine(RobustError):
    reason = "too_many_byzantine"
