"""Why the coordinator refuses an update. Every rejection is named, logged and counted;
none stops the service.

    FedgeError                         (fedge.edge_runtime.kernel.errors: the one root)
    └── UpdateRejected                 (base; .reason is the metric label)
        ├── Oversize                   payload over the configured limit
        ├── BadFrame                   truncated, corrupted, wrong version, not a message
        ├── UnexpectedMessage          a message on a channel not for its kind, or for another device
        ├── StaleRound                 not the open round, or the task is not this device's
        ├── StaleUpdate                async: trained on a model more than max_staleness versions old
        ├── DuplicateUpdate            same (device, round, update id) already counted
        ├── ConflictingUpdate          same key as a counted update, different payload
        ├── WrongModel                 model id or base version differs from the task
        ├── BadShape                   names, shapes, dtypes or indices do not fit the model
        ├── NonFinite                  NaN or Inf in the update
        ├── NormBound                  update norm above the configured bound
        ├── WrongShard                 sharded: an update on a shard topic (or the plain one) not its device's
        ├── StaleEval                  an EvalReport that answers no evaluation asked of its sender
        ├── CheckInTooOften            a check-in over its device's budget (checkin_limit.py)
        ├── RegistryFull               a check-in from a new device id with max_devices known (registry_cap.py)
        └── RetainedMessage            a retained message the broker replayed on a channel other than status

One error does stop it, on purpose: GroupCommitFailed (FedgeError), accepted updates that could
not be stored; the restart resumes from the store (group_commit.py says why). StoreCorrupt
(FedgeError) stops a start: the state db points at payload bytes its payload log does not hold
(payload_log.py), a stored update's bytes no longer have the digest they were accepted with
(admission.replayed), or a row read back holds a value fedge never writes (store_rows.py), which
only a tampered, rotted or lost file explains. StoreGone (FedgeError, exit 2) stops the service,
or refuses its start, when the state_db file was deleted or replaced under it (state_file.py).
StoreLinkLost (FedgeError, exit 1) stops the service: its PostgreSQL connection broke (a cut
link after pg_link.py's timeout, a killed backend) and never works again; the restart reconnects.
"""

from __future__ import annotations

from fedge.edge_runtime.kernel.errors import FedgeError


class UpdateRejected(FedgeError):
    reason = "rejected"


class Oversize(UpdateRejected):
    reason = "oversize"


class BadFrame(UpdateRejected):
    reason = "malformed"

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


class UnexpectedMessage(UpdateRejected):
    reason = "unexpected_message"


class StaleRound(UpdateRejected):
    reason = "stale_round"


class StaleUpdate(UpdateRejected):
    reason = "stale_update"


class DuplicateUpdate(UpdateRejected):
    reason = "duplicate"


class ConflictingUpdate(UpdateRejected):
    reason = "conflicting_duplicate"


class WrongModel(UpdateRejected):
    reason = "wrong_model"


class BadShape(UpdateRejected):
    reason = "bad_shape"


class NonFinite(UpdateRejected):
    reason = "non_finite"


class NormBound(UpdateRejected):
    reason = "norm_bound"


class WrongShard(UpdateRejected):
    reason = "wrong_shard"


class StaleEval(UpdateRejected):
    reason = "stale_eval"


class CheckInTooOften(UpdateRejected):
    reason = "checkin_too_often"


class RegistryFull(UpdateRejected):
    reason = "registry_full"


class RetainedMessage(UpdateRejected):
    reason = "retained"


class GroupCommitFailed(FedgeError):
    """Accepted updates of a burst could not be stored: the coordinator stops (group_commit.py)
    and its restart resumes from the store. Exit 1, not the CLI's 2: a supervisor must restart it
    (hardware/systemd/fedge-coordinator.service does not restart on 2, a config error)."""

    reason = "group_commit_failed"
    exit_status = 1


class StoreCorrupt(FedgeError):
    """The state db and its payload log disagree (payload_log.py), stored bytes lost their
    digest (admission.replayed), or a row the store or the async journal reads back holds a
    value fedge never writes (row_check.py, store_rows.py, async_mode/journal.py): refuse to
    resume from them."""

    reason = "store_corrupt"


class StoreGone(FedgeError):
    """The SQLite state_db was deleted or replaced under the running service, or is missing at a
    start while its payload log says a state existed (state_file.py). Exit 2: a restart would
    start afresh from the initial model, which only the operator may choose."""

    reason = "store_gone"


class StoreLinkLost(FedgeError):
    """The state_dsn connection broke (pg_link.py: a cut link fails within tcp_user_timeout):
    psycopg never reuses it, so the service stops; exit 1, its supervisor restarts it, and the
    restart reconnects and resumes from the store."""

    reason = "store_link_lost"
    exit_status = 1
