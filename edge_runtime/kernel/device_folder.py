"""The names fedge writes in a device's own folder, <state_dir>/<device_id>/, beside the one
folder per model id that holds that model's state (store.py). A model id is a folder name
there, so it must never be one of these: a model "uplink_rate.json" would be a file, and a
model "pending" would be the kept uploads. Every writer takes its name from here, and each
name is declared through `_reserve`, so none is written there without being in RESERVED."""

from __future__ import annotations

_names: set[str] = set()


def _reserve(name: str) -> str:
    _names.add(name)
    return name


ARTIFACTS_DIR = _reserve("artifacts")  # fetched models, one folder per model id (delivery.py)
PENDING_DIR = _reserve("pending")  # updates kept until their Ack (pending.py)
SEEN_TASKS_FILE = _reserve("seen_tasks.json")  # tasks received, and whether each was answered (seen_tasks.py)
SECAGG_ANSWERED_DIR = _reserve("secagg-answered")  # secure rounds already answered (secagg_participant.py)
UPLINK_RATE_FILE = _reserve("uplink_rate.json")  # the learned upload rate (uplink_rate_file.py)
STANDARDIZATION_FILE = _reserve("standardization.npz")  # the mean and std it applies (standardization_record.py)
DEVICE_LOCK_FILE = _reserve("device.lock")  # held by the running device process (device_lock.py)

RESERVED = frozenset(_names)  # never a model id (manifest.check_model_id, wire_fields.MODEL_ID)
# Logged for a folder named as no model id can be (one of these, or a hand-made name) that the
# device skips where it lists its models (fetched_models.installed_models) or its staged states (journal.recover).
NOT_A_MODEL_FOLDER = "not_a_model_folder"
