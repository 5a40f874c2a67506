"""What the simulator reports after each round: the coordinator's federated evaluation (every
device scores the global model and its personalized model on its own held-out split; the
example-weighted global accuracy is the accuracy on the union of those splits), the
backdoor's success on stamped inputs, and at the end the devices that never trained."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.scores import accuracy
from fedge.edge_runtime.trainer import make_backend

from .attacks import backdoor_success


class Scorer:
    """One row per round from the coordinator's evaluation (or, before any, the same scores
    computed here), and at the end the new devices."""

    def __init__(self, setup, zt: np.ndarray, yt: np.ndarray):
        self.setup, self.zt, self.yt = setup, zt, yt
        self.evaluator = make_backend(setup.backend, setup.art_dir, setup.manifest, "sgd")
        # The eval graph takes every trainable input; the global head ignores the personal ones.
        self.placeholder_personal = setup.model.initial("personal")
        self.evaluations = 0
        self.train_sizes = {c.client_id: len(c.y_train) for c in setup.data.clients}
        self.backdoor: tuple[np.ndarray, int] | None = None  # (embedded stamped test inputs, target class)

    def round_row(self, record, shared: dict[str, np.ndarray], runtimes, evaluation=None) -> dict:
        """The round's row. Global and personalized numbers come from the coordinator's
        federated evaluation of `shared` (every device scores it on its own held-out split and
        reports; coordinator/evaluation.py), as ops would see them. Without one (no round has
        committed yet) the simulator scores the model itself, the same way."""
        self.evaluations += 1
        extra = {}
        if self.backdoor is not None:
            stamped = self.evaluator.predict({**shared, **self.placeholder_personal}, self.backdoor[0]).get("global")
            if stamped is not None:
                extra["backdoor_success"] = backdoor_success(np.argmax(stamped, axis=1), self.yt, self.backdoor[1])
        if evaluation is not None:
            scores = {"global_accuracy": evaluation.accuracy_global, "global_loss": evaluation.loss_global,
                      **_spread(_personal(evaluation.per_device.values(), "accuracy")),
                      "personalized_loss_mean": _mean(_personal(evaluation.per_device.values(), "loss")),
                      # not evaluation.reported: a device without test examples reports and scores nothing
                      "evaluated_devices": sum(1 for n in evaluation.per_device.values() if n["examples"]),
                      **smallest_devices(evaluation.per_device, self.train_sizes)}
        else:
            scores = self._score_directly(shared, runtimes)
        if self._tunes():  # finetune: each device tunes a copy of the new global head, then scores it
            scores.update(_spread(self._tuned(shared, runtimes)))
        return {
            "round": record.round_id,
            "committed": record.committed,
            "participants": record.reports,
            "selected": record.selected,
            "train_loss": record.train_loss,
            **scores,
            "bytes_up": record.bytes_up,
            "bytes_up_dense": record.bytes_up_dense,
            "bytes_down": record.bytes_down,
            # evaluation traffic, apart from the training bytes that the compression figures use
            "bytes_eval_up": evaluation.bytes_eval_up if evaluation is not None else 0,
            "bytes_eval_down": evaluation.bytes_eval_down if evaluation is not None else 0,
            **extra,
        }

    def _tunes(self) -> bool:
        cfg = self.setup.cfg
        return cfg.personalization == "finetune" and bool(cfg.finetune_steps)

    def _score_directly(self, shared, runtimes) -> dict:
        logits = self.evaluator.predict({**shared, **self.placeholder_personal}, self.zt)
        model_id = self.setup.manifest.model_id
        evals = [rt.evaluate(model_id, shared, strict=False) for rt in runtimes]
        per_device = [{"examples": e.num_test, "accuracy_personal": e.accuracy_personal,
                       "accuracy_global": e.accuracy_global, "loss_personal": e.loss_personal,
                       "loss_global": e.loss_global} for e in evals]
        return {"global_accuracy": accuracy(logits["global"], self.yt, strict=False) if "global" in logits else None,
                "global_loss": None,
                **_spread(_personal(per_device, "accuracy")),
                "personalized_loss_mean": _mean(_personal(per_device, "loss")),
                "evaluated_devices": 0}

    def _tuned(self, shared, runtimes) -> list[float]:
        cfg, model_id = self.setup.cfg, self.setup.manifest.model_id
        evals = [rt.personalize(model_id, shared, cfg.finetune_steps, self.setup.hyper, from_global=True,
                                seed=self.evaluations) for rt in runtimes]
        return [e.accuracy_personal if e.accuracy_personal is not None else e.accuracy_global
                for e in evals if e.num_test]

    def new_devices(self, shared: dict[str, np.ndarray]) -> dict:
        """Devices that never trained: the global head as is, then after head-only fine-tuning
        on the device (DeviceRuntime.personalize, from the global head)."""
        cfg, model_id = self.setup.cfg, self.setup.manifest.model_id
        runtimes = [self.setup.runtime(c) for c in self.setup.new_clients if len(c.y_test)]
        before = [rt.evaluate(model_id, shared, strict=False).accuracy_global for rt in runtimes]
        tuned = [rt.personalize(model_id, shared, cfg.new_device_steps, self.setup.hyper,
                                from_global=True).accuracy_personal
                 for rt in runtimes] if cfg.new_device_steps else []
        return {
            "count": len(self.setup.new_clients),
            "evaluated": len(runtimes),  # the means are over these: a device with no x_test has no score
            "steps": cfg.new_device_steps,
            "global_accuracy_mean": float(np.mean(before)),
            "global_accuracy_min": float(np.min(before)),
            "tuned_accuracy_mean": float(np.mean(tuned)) if tuned else None,
            "tuned_accuracy_min": float(np.min(tuned)) if tuned else None,
        }


def _personal(per_device, kind: str) -> list[float]:
    """Each device's personalized model's `kind` (accuracy or loss): its personal head's, or the
    global model's when the spec has no personal head."""
    out = []
    for d in per_device:
        value = d[f"{kind}_personal"] if d[f"{kind}_personal"] is not None else d[f"{kind}_global"]
        if d["examples"] and value is not None:
            out.append(value)
    return out


def smallest_devices(per_device: dict[str, dict], train_sizes: dict[str, int], fraction: float = 0.1) -> dict:
    """The evaluated devices with the fewest training examples (the smallest `fraction` of them,
    at least one; ties broken by id): their mean global and personalized accuracy, unweighted.
    Non-IID data and DP noise both hit these devices first (the privacy benchmark reports them)."""
    scored = sorted((train_sizes[d], d) for d, numbers in per_device.items()
                    if d in train_sizes and numbers["examples"] and numbers["accuracy_global"] is not None)
    if not scored:
        return {}
    chosen = [per_device[d] for _, d in scored[:max(1, int(len(scored) * fraction))]]
    return {"smallest_devices": len(chosen), "smallest_devices_max_examples": scored[len(chosen) - 1][0],
            "smallest_devices_global_accuracy": _mean([n["accuracy_global"] for n in chosen]),
            "smallest_devices_personalized_accuracy": _mean(_personal(chosen, "accuracy"))}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _spread(accuracies: list[float]) -> dict:
    # p10: the worst device alone is one device's tiny test set (7 of 9 right is 78%); the 10th
    # percentile (numpy's linear interpolation) is the tail the heterogeneity goals name.
    if not accuracies:  # no device scored (every one declined the evaluation): nothing to report
        return dict.fromkeys(("personalized_accuracy_mean", "personalized_accuracy_min", "personalized_accuracy_p10"))
    return {"personalized_accuracy_mean": float(np.mean(accuracies)),
            "personalized_accuracy_min": float(np.min(accuracies)),
            "personalized_accuracy_p10": float(np.percentile(accuracies, 10))}
