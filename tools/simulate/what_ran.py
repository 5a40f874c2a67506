"""run.json's record of what a simulation ran, where it differs from the flags (fleet._run
lays it over the SimConfig's fields)."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import numpy as np

from fedge.tools.datasets import data_findings

if TYPE_CHECKING:
    from .fleet import FleetSetup


def most_common_share(data) -> float | None:
    """The global accuracy of always predicting the most common label of the devices' test data."""
    labels = np.concatenate([c.y_test for c in data.clients]) if data.clients else np.zeros(0)
    return float(np.bincount(labels.astype(np.int64)).max() / len(labels)) if len(labels) else None


def devices_missing_labels(clients) -> int:
    """How many devices train on fewer labels than the devices' pooled training splits hold: a
    sign of label skew, under which each device standardizing with its own mean and std moves
    every label's features to the same place (report.constant_guess names it)."""
    held = [np.unique(c.y_train) for c in clients]
    fleet = np.unique(np.concatenate(held)) if held else np.zeros(0)
    return sum(len(labels) < len(fleet) for labels in held)


def what_ran(setup: FleetSetup) -> dict:
    """run.json's config where it differs from the flags: a --data folder decides the devices
    and the split, a round cannot ask for more devices than exist, and `standardize` is what
    ran (true or false; auto decided on the folder's features, standardize_why says how), with
    `divided_by_255` saying whether auto read 8-bit intensities saved as float (or a wider
    integer) as x / 255, as devices read uint8 (null for a shipped dataset)."""
    data = setup.data
    everyone = data.clients + setup.new_clients
    # The coordinator config as it ran (fleet-set fields and effective momentum included).
    out = {"backend": setup.backend, "coordinator": asdict(setup.ccfg),
           "data": {"devices": len(everyone), "num_classes": data.num_classes, "input_shape": list(data.input_shape),
                    "train_examples": sum(len(c.y_train) for c in everyone),
                    "test_examples": sum(len(c.y_test) for c in everyone),
                    "most_common_test_share": most_common_share(data),
                    "devices_missing_labels": devices_missing_labels(everyone),
                    "findings": data_findings(replace(data, clients=everyone))}}
    decided = data.standardizing  # a --data folder's (tools/standardizing.py); shipped data: the flag alone
    out.update(standardize=decided.on if decided else bool(setup.cfg.standardize),
               standardize_why=decided.why if decided else None,
               standardize_with=decided.applied_with if decided else
               (setup.cfg.standardize_using if setup.cfg.standardize else None),
               divided_by_255=decided.divided_by_255 if decided else None)
    if setup.cfg.data_dir:
        out.update(devices=len(everyone), dataset=data.name, partition="files", alpha=None, classes_per_client=None)
    else:  # the α (and β) that ran, when the flags left them to the data's default
        out.update(alpha=setup.cfg.split_alpha, beta=setup.cfg.split_beta if setup.cfg.synthetic else None)
    if setup.cfg.synthetic:  # synthetic(α, β): every device draws its own data, no split
        out.update(partition="natural", classes_per_client=None)
    return out
