"""What the simulator measures after each round: the global model on the union of the
devices' held-out splits, each device's personalized model on its own split, the backdoor's
success on stamped inputs, and at the end the devices that never trained."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.trainer import make_backend

from .attacks import backdoor_success


class Scorer:
    """Scores the global model after each round: global head on the union of the held-out
    splits, each device's personalized model on its own split, and at the end the new devices."""

    def __init__(self, setup, zt: np.ndarray, yt: np.ndarray):
        self.setup, self.zt, self.yt = setup, zt, yt
        self.evaluator = make_backend(setup.backend, setup.art_dir, setup.manifest, "sgd")
        # The eval graph takes every trainable input; the global head ignores the personal ones.
        self.placeholder_personal = setup.model.initial("personal")
        self.evaluations = 0
        self.backdoor: tuple[np.ndarray, int] | None = None  # (embedded stamped test inputs, target class)

    def round_row(self, record, shared: dict[str, np.ndarray], runtimes) -> dict:
        self.evaluations += 1
        logits = self.evaluator.predict({**shared, **self.placeholder_personal}, self.zt)
        global_acc = float(np.mean(np.argmax(logits["global"], axis=1) == self.yt)) if "global" in logits else None
        extra = {}
        if self.backdoor is not None and "global" in logits:
            stamped = self.evaluator.predict({**shared, **self.placeholder_personal}, self.backdoor[0])["global"]
            extra["backdoor_success"] = backdoor_success(np.argmax(stamped, axis=1), self.yt, self.backdoor[1])
        return {
            "round": record.round_id,
            "committed": record.committed,
            "participants": record.reports,
            "selected": record.selected,
            "global_accuracy": global_acc,
            "train_loss": record.train_loss,
            **_spread(self._personalized(shared, runtimes)),
            "bytes_up": record.bytes_up,
            "bytes_up_dense": record.bytes_up_dense,
            "bytes_down": record.bytes_down,
            **extra,
        }

    def _personalized(self, shared, runtimes) -> list[float]:
        cfg, model_id = self.setup.cfg, self.setup.manifest.model_id
        if cfg.personalization == "finetune" and cfg.finetune_steps:  # each device tunes a copy of the new global head
            evals = [rt.personalize(model_id, shared, cfg.finetune_steps, self.setup.hyper, from_global=True,
                                    seed=self.evaluations) for rt in runtimes]
        else:
            evals = [rt.evaluate(model_id, shared) for rt in runtimes]
        return [e.accuracy_personal if e.accuracy_personal is not None else e.accuracy_global
                for e in evals if e.num_test]

    def new_devices(self, shared: dict[str, np.ndarray]) -> dict:
        """Devices that never trained: the global head as is, then after head-only fine-tuning
        on the device (DeviceRuntime.personalize, from the global head)."""
        cfg, model_id = self.setup.cfg, self.setup.manifest.model_id
        runtimes = [self.setup.runtime(c) for c in self.setup.new_clients if len(c.y_test)]
        before = [rt.evaluate(model_id, shared).accuracy_global for rt in runtimes]
        tuned = [rt.personalize(model_id, shared, cfg.new_device_steps, self.setup.hyper,
                                from_global=True).accuracy_personal
                 for rt in runtimes] if cfg.new_device_steps else []
        return {
            "count": len(self.setup.new_clients),
            "steps": cfg.new_device_steps,
            "global_accuracy_mean": float(np.mean(before)),
            "global_accuracy_min": float(np.min(before)),
            "tuned_accuracy_mean": float(np.mean(tuned)) if tuned else None,
            "tuned_accuracy_min": float(np.min(tuned)) if tuned else None,
        }


def _spread(accuracies: list[float]) -> dict:
    return {"personalized_accuracy_mean": float(np.mean(accuracies)),
            "personalized_accuracy_min": float(np.min(accuracies))}
