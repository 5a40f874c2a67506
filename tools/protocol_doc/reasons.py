"""The reason tables of docs/PROTOCOL.md: why the coordinator refuses a report (and whether the
device hears it in an Ack), why it paces a device, and which decline reasons it treats
specially. The reasons themselves are read from the code; what the code cannot say (does an
Ack go back?) is written here, once per reason, and a reason without its note stops the
generator, so a new rejection cannot ship undocumented."""

from __future__ import annotations

import ast
import inspect
import re

from fedge.coordinator import backoff, pace, rounds
from fedge.coordinator import errors as coordinator_errors
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.errors import UpdateRejected
from fedge.edge_runtime import secagg_participant
from fedge.edge_runtime.kernel import errors as kernel_errors
from fedge.edge_runtime.kernel.secagg import session as secagg_session

from .schema import comment_lines

_DEFAULT = {f.name: f.default for f in CoordinatorConfig.__dataclass_fields__.values()}

# reason -> (Ack sent back?, what a client should make of it). Checked against errors.py.
ACK_NOTES: dict[str, tuple[str, str]] = {
    "oversize": ("**no**", "Refused by size before decoding, so nobody is named to answer: the device hears "
                 "nothing and, if it resends, is refused again. Keep frames under the coordinator's "
                 "`max_update_bytes`; the coordinator refuses at start a cap below the largest update the "
                 "model can take under the task's compression, so an update that follows the task fits."),
    "malformed": ("only for `num_examples` ≤ 0", "A frame that does not decode (bad magic, CRC, msgpack, an "
                  "unknown or missing field, a value out of range) gets no Ack; its reason is one of the codec's "
                  "below. A decoded Update whose `num_examples` is 0 is answered `accepted: false`."),
    "unexpected_message": ("no (a shard worker: yes)", "A message on a channel not meant for its kind, or naming "
                           "another device than its topic. A shard worker answers a plain Update in a "
                           "secure-aggregation fleet."),
    "stale_round": ("yes", "Not the open round, or not this device's task of it (also: the Update's "
                    "`device_id` differs from its topic's; a Decline of a task already answered, with no Ack). "
                    "Stop resending it."),
    "stale_update": ("yes", "Asynchronous mode: trained on a model more than `max_staleness` versions old. "
                     "Wait for the next task."),
    "duplicate": ("yes, **accepted: true**", "This (device, round, update_id) was already counted with the same "
                  "bytes: your earlier copy is in. Stop resending. Also a Decline of a task whose decline was "
                  "counted (no Ack)."),
    "conflicting_duplicate": ("yes", "A counted update_id with different bytes. An update_id names one payload "
                              "forever; a new payload needs a new id (and a new task)."),
    "wrong_model": ("yes", "`model_id` or `base_version` differs from the task's `model_id` / `model_version`."),
    "bad_shape": ("yes", "The payload does not fit the model: a tensor missing, extra, renamed or reshaped; a "
                  "bad index; fp32 with a non-zero scale; a code out of range; a truncated or corrupt payload "
                  "frame."),
    "non_finite": ("yes", "NaN or Inf in the decoded delta (or its scale)."),
    "norm_bound": ("yes", "The decoded delta's L2 norm over all tensors exceeds the coordinator's `norm_bound`."),
    "wrong_shard": ("yes", "Sharded fleet: sent to a shard topic (or the plain topic) other than the task's "
                    "`shard`."),
    "stale_eval": ("no", "An EvalReport answering no evaluation asked of its sender (Acks answer Updates only)."),
    "checkin_too_often": ("no", f"A CheckIn over its device's budget: `checkin_burst` at once "
                          f"({_DEFAULT['checkin_burst']} by default), then one per `checkin_refill_s` "
                          f"({_DEFAULT['checkin_refill_s']:g} s). Not registered, no Pace back. Check in when "
                          "Pace says, on (re)connect and when a new Announcement session appears, not in a loop."),
    "registry_full": ("no", f"A CheckIn from a device id the coordinator does not know while its registry holds "
                      f"`max_devices` devices ({_DEFAULT['max_devices']:,} by default). Not registered, no Pace back; "
                      "devices it knows are unaffected. Ask the operator: the fleet is larger than the coordinator "
                      "was configured for."),
    "retained": ("no", "A message on your `checkin`, `update` or `fetch` topic that the broker replayed from its "
                 "retained store, at a coordinator's (re)subscription. The copy that came live was handled then; the "
                 "replay would come back at every restart, so it is refused. Set retain on your `status` topic "
                 "only (the Last Will and the online Status)."),
}


def _tree_lines(doc: str) -> dict[str, str]:
    """Class name -> its description in a module docstring's `├── Name   text` tree."""
    out = {}
    for line in doc.splitlines():
        m = re.match(r"\s*[│├└─\s]*([A-Z]\w+)\s{2,}(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def rejection_classes() -> list[type]:
    found = [cls for _, cls in inspect.getmembers(coordinator_errors, inspect.isclass)
             if issubclass(cls, UpdateRejected) and cls is not UpdateRejected]
    return sorted(found, key=lambda cls: inspect.getsourcelines(cls)[1])  # errors.py's order


def rejections_table() -> str:
    described = _tree_lines(coordinator_errors.__doc__ or "")
    rows = ["| reason | error | what it means | Ack? | notes for a client |", "|---|---|---|---|---|"]
    for cls in rejection_classes():
        if cls.reason not in ACK_NOTES:
            raise LookupError(f"protocol_doc: rejection reason {cls.reason!r} ({cls.__name__}) has no ACK_NOTES entry")
        acked, note = ACK_NOTES[cls.reason]
        rows.append(f"| `{cls.reason}` | {cls.__name__} | {described.get(cls.__name__, '')} | {acked} | {note} |")
    return "\n".join(rows)


def codec_reasons_table() -> str:
    """The reasons a frame that does not decode is counted under (never sent back)."""
    described = _tree_lines(kernel_errors.__doc__ or "")
    rows = ["| reason | error | what it means |", "|---|---|---|"]
    found = inspect.getmembers(kernel_errors, inspect.isclass)
    for _, cls in sorted(found, key=lambda m: inspect.getsourcelines(m[1])[1]):  # errors.py's order
        if issubclass(cls, kernel_errors.CodecError) and cls is not kernel_errors.CodecError:
            rows.append(f"| `{cls.reason}` | {cls.__name__} | {described.get(cls.__name__, '')} |")
    return "\n".join(rows)


def _constant_comments(module) -> dict[str, str]:
    """Module-level NAME = ... -> the comment on its line."""
    source = inspect.getsource(module)
    comments = comment_lines(source)
    return {node.targets[0].id: comments.get(node.lineno, "")
            for node in ast.parse(source).body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}


def pace_table() -> str:
    notes = {**_constant_comments(rounds), **_constant_comments(pace)}
    by_value = {getattr(m, name): text for m in (rounds, pace) for name, text in notes.items()
                if isinstance(getattr(m, name, None), str) and name.isupper()}
    rows = ["| Pace.reason | when |", "|---|---|"]
    rows += [f"| `{reason}` | {by_value.get(reason, '')} |" for reason in pace.REASONS]
    return "\n".join(rows)


def decline_notes() -> str:
    permanent = ", ".join(f"`{r}`" for r in sorted(backoff.PERMANENT_DECLINES))
    recheck = ", ".join(f"`{r}` {s:g} s" for r, s in pace.RECHECK_S.items())
    return (f"- Reasons that retrying cannot cure park the device (no tasks until a check-in with a different "
            f"fingerprint): {permanent}.\n"
            f"- A decline's Pace waits less for reasons that pass by themselves: {recheck}; any other reason waits "
            f"the coordinator's `pace_declined_s`. A reason `aborted:<cause>` is judged by its cause.\n"
            f"- Everything else is free text to the coordinator: counted per reason and logged.\n\n"
            f"A task the device cannot decode (a value outside its field's range, an unknown field) is declined "
            f"with the codec's reason (`{kernel_errors.MalformedPayload.reason}`, the field in `detail`) when its "
            f"frame is intact and its `round_id`, `task_id` and `device_id` are valid and name the device: stage "
            f"`before` for a TrainTask or SecAggTask, `during` for a KeyDirectory, ShareDelivery or UnmaskRequest; "
            f"a damaged frame names nobody reliably and is not answered. A refused copy of a task the device "
            f"already holds (one it trained or declined, or a secure round's task it advertised in or is fetching "
            f"the model for) gets no new Decline: only a Decline it already sent is repeated. An EvalTask the "
            f"device cannot decode is answered with an EvalReport whose `reason` is the codec's and whose `detail` "
            f"names the field, when its `eval_id`, `device_id` and `model_version` are valid and name the device; "
            f"the coordinator counts it among the evaluation's declined devices by reason, closes the evaluation "
            f"once every asked device has answered, and takes nothing from it but that reason. Any copy of an "
            f"EvalTask the device answered, bad or mended, gets no second answer. A secure round's "
            f"stage is declined with one of these (the device's own, `edge_runtime/kernel/secagg/session.py` and "
            f"`edge_runtime/secagg_participant.py`); the coordinator counts them like any other:\n\n"
            f"{secagg_declines_table()}")


def secagg_declines_table() -> str:
    """The secure-aggregation decline reasons, from the constants that name them and their comments."""
    rows = ["| reason | when |", "|---|---|"]
    for module in (secagg_session, secagg_participant):
        notes = _constant_comments(module)
        rows += [f"| `{getattr(module, name)}` | {text} |" for name, text in notes.items()
                 if isinstance(getattr(module, name, None), str) and getattr(module, name).startswith(("secagg_",
                                                                                                        "dp_noise"))]
    return "\n".join(rows)
