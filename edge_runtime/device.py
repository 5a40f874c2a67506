"""What a device does with a task, without I/O: check eligibility, train locally, run the
delta through the post-processing chain (postprocess.py: clip, compress), record the new local
state with the update in the journal, and answer with an Update or a Decline.

SCAFFOLD (a task with a non-empty `correction`, which is the server control variate c): the
device trains with the correction c - c_i, its own c_i read from the store (zeros at first),
computes Δc_i by option II (local_training.scaffold_control_delta), and uploads it compressed
like the delta (same bits and top-k, no clipping: Δc_i is in gradient units, the clip bound
in delta units) with its own error-feedback residual. c_i then moves by what was *sent*, the
rest waits in the residual: so the coordinator's c stays the mean of the c_i that the devices
hold, however lossy the compression. c_i is saved with the update, like the delta's residual
(staged, the update kept for upload, then applied; see journal.py); if the coordinator then
rejects the upload (typically stale: the round closed before it arrived), `on_ack` puts c_i
and its residual back, so c and the c_i stay consistent. An upload that is lost for good,
with no Ack ever, leaves c_i ahead of c.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .device_data import DeviceEval, LocalData
from .head_refit import HeadFit, keep_refit, refit_kept_head
from .journal import DeviceJournal, commit_task_state
from .kernel.compress import decompress_update
from .kernel.errors import ArtifactError, CodecError, ConfigError, FedgeError, PayloadTooLarge, TaskAborted
from .kernel.manifest import check_params
from .kernel.protocol import Ack, CheckIn, Decline, TaskHyper, TrainTask, Update
from .kernel.update_codec import decode_dense, dense_fp32_bytes
from .local_training import check_scaffold_hyper, scaffold_control_delta, train_locally
from .model_runtime import ModelRuntime, loaded
from .personalize import PINNABLE, personal_start, tune_head
from .postprocess import CONTROL_STEPS, UPDATE_STEPS, Delta, TaskContext, encode, postprocess
from .scores import accuracy, cross_entropy
from .state_health import BAD_STATE, StateHealth
from .store import DeviceStore
from .trainer import available_backends, make_backend
from .trainer.base import fresh_optimizer_state

log = logging.getLogger("fedge.device")

EligibilityCheck = Callable[[], "str | None"]  # returns a decline reason, or None when eligible


class DeviceRuntime:
    def __init__(
        self,
        device_id: str,
        data: LocalData,
        models: dict[str, str | Path],  # model_id -> artifact directory
        state_root: str | Path,
        backend: str = "auto",
        eligibility: EligibilityCheck | None = None,
        seed: int = 0,
        abort_check: EligibilityCheck | None = None,
    ):
        """eligibility is asked before a task; abort_check between training steps (default:
        the same check). They differ on real devices: training itself uses the CPU, so
        "CPU idle" can only be a precondition, never an abort cause."""
        self.device_id = device_id
        self.data = data
        self.model_dirs = dict(models)
        self.state_root = Path(state_root)
        self.backend_name = backend
        self.eligibility = eligibility or (lambda: None)
        self.state_health = StateHealth(self.state_root / device_id, self.model_dirs)  # check-ins say bad_state
        self.abort_check = abort_check or self.eligibility
        self.seed = seed
        self._models: dict[str, ModelRuntime] = {}
        # One task or evaluation at a time: a simulator may evaluate from another thread
        # while a late task still trains, and backends keep state between steps.
        self._busy = threading.Lock()
        # Update ids the coordinator accepted lately: a later rejection of one (a copy resent
        # before its Ack came, refused once the coordinator forgot its key) must not undo the
        # SCAFFOLD move its acceptance made final (on_ack).
        self._accepted: deque[str] = deque(maxlen=64)
        self._backends: dict[tuple[str, str], object] = {}
        # (model id, state key) -> its last task's, for refit_kept_head (in memory only)
        self.head_fits: dict[tuple[str, str], HeadFit] = {}
        self.announced: dict[str, int] = {}  # model id -> the coordinator's latest announced version (the agent's)

    def check_in(self) -> CheckIn:
        reason = self.eligibility() or self.state_health.reason(self._busy)  # never under a task
        return CheckIn(
            device_id=self.device_id,
            backends=available_backends(),
            model_ids=tuple(self.model_dirs),
            eligible=reason is None,
            reason=reason or "",
            num_examples=len(self.data.y_train),
        )

    def replace_data(self, data: LocalData) -> None:
        """Swap in new local data between tasks (never during one), and drop the embeddings
        computed from the old data."""
        with self._busy:
            self.data = data
            for model in self._models.values():
                model.forget_embeddings()

    def add_model(self, model_id: str, directory: str | Path) -> None:
        """Make a verified artifact directory (e.g. one just fetched) available for tasks."""
        runtime = ModelRuntime(directory, expected_model_id=model_id)  # verifies every file against the manifest
        self._drop(model_id)
        self._models[model_id] = runtime  # replaces any older copy of this model, e.g. after a re-fetch
        self.model_dirs[model_id] = directory

    def forget_model(self, model_id: str, directory: Path) -> None:
        """Its fetched folder was removed (fetched_models.py): a later task fetches it again."""
        if self.model_dirs.get(model_id) is not None and Path(self.model_dirs[model_id]) == directory:
            del self.model_dirs[model_id]
            self._drop(model_id)

    def _drop(self, model_id: str) -> None:
        """Forget the loaded copy of a model: its embeddings and graphs are of files that changed."""
        self._models.pop(model_id, None)
        for key in [k for k in self._backends if k[0] == model_id]:
            del self._backends[key]

    def model(self, model_id: str) -> ModelRuntime:
        if model_id in self._models and self._models[model_id].stale():  # another build put in its folder
            log.warning("device %s: the files of model %s changed on disk: loading them again", self.device_id,
                        model_id)
            self._drop(model_id)
        if model_id not in self._models:
            if model_id not in self.model_dirs:
                raise ArtifactError(f"device {self.device_id} has no artifacts for model {model_id}")
            self._models[model_id] = ModelRuntime(self.model_dirs[model_id], expected_model_id=model_id)
        return self._models[model_id]

    def store(self, model: ModelRuntime) -> DeviceStore:
        """The device's own state for the model's contents (DeviceStore sets aside any other's)."""
        return DeviceStore(self.state_root / self.device_id, model.model_id, key=model.state_key)

    def _backend(self, model: ModelRuntime, optimizer: str):
        key = (model.model_id, optimizer)
        if key not in self._backends:
            self._backends[key] = loaded(lambda: make_backend(self.backend_name, model.dir, model.manifest,
                                                               optimizer), model)
        return self._backends[key]

    def _tuning_backend(self, model: ModelRuntime, optimizer: str):
        """Head tuning pins the body by restarting the backend each step, which the ORT
        training API cannot do with its optimizer state; the training build runs the portable
        graph as well, so tuning uses that there."""
        backend = self._backend(model, optimizer)
        if backend.name in PINNABLE:
            return backend
        key = (model.model_id, optimizer, "tuning")
        if key not in self._backends:
            self._backends[key] = loaded(lambda: make_backend("portable", model.dir, model.manifest, optimizer),
                                          model)
        return self._backends[key]

    def handle_task(self, task: TrainTask, deadline_check: Callable[[], str | None] | None = None,
                    journal: DeviceJournal | None = None) -> Update | Decline:
        """Train for `task`; every failure becomes a Decline that says why. deadline_check is
        asked between steps next to abort_check: the agent's clock says when the task's time is up.

        journal: where the update is kept until acknowledged (the agent's). The task's new local
        state and its update go through journal.record (stage, keep, apply), so a crash never
        leaves the state moved on without its update kept; if keeping raises PayloadTooLarge,
        the state stays as it was and the task is declined. Without a journal the state is
        applied and the update kept nowhere."""
        reason = self.eligibility()
        if reason:
            return self._decline(task, reason, "not eligible", "before")
        deadline_check = deadline_check or (lambda: None)

        def should_abort() -> str | None:
            return self.abort_check() or deadline_check()

        try:
            with self._busy:
                return self._train(task, should_abort, journal)
        except TaskAborted as exc:
            return self._decline(task, f"aborted:{exc.cause}", exc.detail, "during")
        except PayloadTooLarge as exc:  # the update can never be sent: nothing of it was kept
            return self._decline(task, exc.reason, str(exc), "during")
        except (ArtifactError, CodecError, ConfigError) as exc:
            return self._decline(task, exc.reason, str(exc), "before")
        except FedgeError as exc:
            log.warning("device %s task %s failed: %s", self.device_id, task.task_id, exc)
            return self._decline(task, exc.reason, str(exc), "during")

    def _train(self, task: TrainTask, should_abort: Callable[[], str | None],
               journal: DeviceJournal | None) -> Update:
        model = self.model(task.model_id)
        manifest = model.manifest
        shared = decode_dense(task.params)
        check_params(manifest, shared, "shared")
        store = self.store(model)
        store.keep_global(shared, task.model_version, self.announced.get(model.model_id))  # for `fedge device export`
        server_control = client_control = correction = None
        if task.correction:  # a SCAFFOLD round: the task carries c
            check_scaffold_hyper(task.hyper)
            server_control = decode_dense(task.correction)
            check_params(manifest, server_control, "shared")
            client_control = _fitting(store.load_control(), shared) or {k: np.zeros_like(v) for k, v in shared.items()}
            correction = {k: server_control[k] - client_control[k] for k in shared}
        personal = store.load_personal()
        if not personal:  # the device's first task for this model
            initial = model.initial("personal")
            personal = personal_start(initial, shared) if task.hyper.personal_head_from_global else initial
        check_params(manifest, personal, "personal")
        opt_state = store.load_opt_state() if task.hyper.keep_optimizer_state else None
        # Fresh unless it has this optimizer's names and this model's shapes: the optimizer changed, or the model
        # (re-fetched under its id), and a state of other shapes raised ORT's InvalidArgument out of the poll.
        opt_state = _fitting(opt_state, fresh_optimizer_state(manifest, task.hyper.optimizer))
        if server_control is not None:
            opt_state = None  # SCAFFOLD's c_i estimate assumes an empty momentum buffer (scaffold_control_delta)
        z = model.embed(self.data.x_train, cache_key=0)
        model.check_labels(self.data.y_train, "y_train")
        rng = np.random.default_rng([_stable_int(self.device_id), task.seed, task.round_id, self.seed])
        result = train_locally(
            self._backend(model, task.hyper.optimizer),
            manifest,
            shared,
            personal,
            opt_state,
            z,
            self.data.y_train,
            task.hyper,
            rng,
            correction=correction,
            should_abort=should_abort,
        )
        update_id = uuid.uuid4().hex
        ctx = TaskContext(task.compression, _fitting(store.load_residual(), result.shared_delta), self.device_id,
                          task.round_id)  # one of other names or shapes (damage) is dropped, as c_i's is
        out = postprocess(UPDATE_STEPS)(Delta(result.shared_delta), ctx, rng)
        payload, residual, clip_seen = encode(out), out.residual, out.norm_before_clip
        control = b""
        dense_bytes = dense_fp32_bytes({p.name: p.shape for p in manifest.by_role("shared")})
        kept_state = result.opt_state if task.hyper.keep_optimizer_state else None  # None: no stale file lingers
        # control_undo: an earlier SCAFFOLD upload's, dropped here at no extra write (on_ack)
        saves = {"personal": result.personal, "opt_state": kept_state, "residual": residual, "control_undo": None}
        if server_control is not None:
            delta_c = scaffold_control_delta(server_control, result.shared_delta, result.steps, task.hyper)
            old_residual = _fitting(store.load_control_residual(), shared)
            unclipped = dataclasses.replace(task.compression, clip_norm=0.0)
            ctx = TaskContext(unclipped, old_residual, self.device_id, task.round_id)
            out = postprocess(CONTROL_STEPS)(Delta(delta_c), ctx, rng)
            control, control_residual = encode(out), out.residual
            dense_bytes *= 2
            decoded = decompress_update(list(out.sent))  # what the coordinator will add to c
            saves["control_undo"] = store.undo_arrays(update_id, client_control, old_residual)
            saves["control"] = {k: client_control[k] + decoded[k] for k in client_control}
            saves["control_residual"] = control_residual
        update = Update(
            device_id=self.device_id,
            round_id=task.round_id,
            task_id=task.task_id,
            update_id=update_id,
            model_id=task.model_id,
            base_version=task.model_version,
            num_examples=result.num_examples,
            payload=payload,
            dense_bytes=dense_bytes,
            metrics={"loss": result.mean_loss, "steps": float(result.steps),
                     # the norm before the clip: the coordinator's adaptive clipping (DP) counts
                     # the devices it clipped, noised, to follow a quantile of these norms
                     **({"norm": clip_seen} if task.compression.clip_norm > 0 else {})},
            control=control,
            shard=task.shard,
        )
        # Staged, kept, applied: see journal.py for why this order survives a crash at any step.
        meta = {"last_round": task.round_id, "last_task": task.task_id}
        if journal is not None:
            journal.record(store, update, saves, meta)
        else:
            commit_task_state(store, update_id, saves, meta, keep=lambda: None)
        self.head_fits[(model.model_id, model.state_key)] = HeadFit(task.hyper, result.steps, task.model_version)
        return update

    def on_ack(self, ack: Ack) -> None:
        """The coordinator's verdict on an upload. A rejected SCAFFOLD upload was not added to
        c, so c_i and its residual go back to what they were before it. An accepted one needs no
        write: its undo stays until the next task's staged state replaces or drops it, and it
        matches only its own update id, which the coordinator never rejects after accepting it
        unless its round was abandoned (a duplicate that arrives after that), when c did not
        take it either. Only the latest SCAFFOLD upload of a model can be undone."""
        with self._busy:
            if ack.accepted:
                self._accepted.append(ack.update_id)
            elif ack.update_id in self._accepted:
                log.info("device %s: upload %s rejected (%s) after it was accepted: kept", self.device_id,
                         ack.update_id, ack.reason)
                return
            for model_id in self.model_dirs:
                if not (self.state_root / self.device_id / model_id).is_dir():
                    continue
                store = DeviceStore(self.state_root / self.device_id, model_id)
                undo = store.load_control_undo()
                if undo is None or undo[0] != ack.update_id:
                    continue
                if not ack.accepted:  # c_i and its residual back, the undo gone: one durable write
                    store.save_state({"control": undo[1], "control_residual": undo[2], "control_undo": None})
                    log.info("device %s: SCAFFOLD upload %s rejected (%s): c_i put back", self.device_id,
                             ack.update_id, ack.reason)

    def _decline(self, task: TrainTask, reason: str, detail: str, stage: str) -> Decline:
        log.info("device %s declines task %s: %s (%s)", self.device_id, task.task_id, reason, detail)
        if reason == BAD_STATE:  # with the key of its contents, if loaded: their check sets aside what a task would
            self.state_health.failed(task.model_id, getattr(self._models.get(task.model_id), "state_key", None))
        return Decline(self.device_id, task.round_id, task.task_id, reason, detail, stage)

    def keep_global(self, model_id: str, shared: dict[str, np.ndarray], version: int) -> None:
        """A committed model this device evaluated becomes the one `fedge device export` uses,
        when it is newer than the one its last task brought (the final round's model reaches a
        device only in an evaluation); DeviceStore.keep_global says when an older one replaces it."""
        self.store(self.model(model_id)).keep_global(shared, version, self.announced.get(model_id))

    def evaluate(self, model_id: str, shared: dict[str, np.ndarray], strict: bool = True,
                 version: int | None = None, should_abort: Callable[[], str | None] | None = None) -> DeviceEval:
        """Accuracy on the device's own held-out split: global head and personal head. `strict`:
        global logits that are not finite are a NonFiniteValues (a federated evaluation then keeps
        no such model); else, and always for the device's own personal head, such rows count wrong.
        `version`: the committed version `shared` is; given, the private head is first refit to its
        body as far as the rounds since this device's last task call for (head_refit.py), stopping
        when `should_abort` (default: abort_check) says so; it is kept only once scored."""
        with self._busy:
            return self._evaluate(model_id, shared, strict, version, should_abort or self.abort_check)

    def _evaluate(self, model_id: str, shared: dict[str, np.ndarray], strict: bool, version: int | None,
                  should_abort: Callable[[], str | None]) -> DeviceEval:
        model = self.model(model_id)
        seed = [_stable_int(self.device_id), self.seed]
        personal, refit = refit_kept_head(self, model, shared, version, seed, self._tuning_backend, should_abort)
        personal = personal or model.initial("personal")
        z = model.embed(self.data.x_test, cache_key=1)
        model.check_labels(self.data.y_test, "y_test")
        logits = self._backend(model, "sgd").predict({**shared, **personal}, z)
        y = self.data.y_test
        scores = DeviceEval(len(y), accuracy(logits.get("personal"), y, strict=False),
                            accuracy(logits.get("global"), y, strict),  # NonFiniteValues first: nothing kept
                            cross_entropy(logits.get("personal"), y), cross_entropy(logits.get("global"), y))
        if refit is not None:
            keep_refit(self, model, personal, refit)
        return scores

    def personalize(self, model_id: str, shared: dict[str, np.ndarray], steps: int, hyper: TaskHyper,
                    from_global: bool = False, seed: int = 0) -> DeviceEval:
        """Fit this device's personalized head to `shared` (a global model it received) with
        `steps` head-only steps on its own data, keep it, and score it on the held-out split.

        A model with a personal head tunes that head, starting from the device's own (or from
        the global head's values when `from_global`, or when the device never trained). A
        global-only model tunes a copy of head_global, kept as the device's tuned head; the
        shared params themselves never change. accuracy_personal is the tuned model's."""
        with self._busy:
            model = self.model(model_id)
            check_params(model.manifest, shared, "shared")
            store = self.store(model)
            head = "personal" if "personal" in model.manifest.heads else "global"
            own = store.load_personal()
            personal = own if own is not None else model.initial("personal")
            start = {**shared, **personal}
            if from_global or own is None:  # begin from what the fleet learned (a personal head and a global one)
                start.update(personal_start(personal, shared))
            z = model.embed(self.data.x_train, cache_key=0)
            rng = np.random.default_rng([_stable_int(self.device_id), seed, self.seed, 7])
            tuned = tune_head(self._tuning_backend(model, hyper.optimizer), start, head, z, self.data.y_train, hyper,
                              steps, rng)
            if head == "personal":
                store.save_personal({**personal, **tuned})
            else:
                store.save_tuned_head(tuned)
            z_test, y = model.embed(self.data.x_test, cache_key=1), self.data.y_test
            evaluator = self._backend(model, "sgd")
            as_received = evaluator.predict({**shared, **personal}, z_test).get("global")
            return DeviceEval(len(y), accuracy(evaluator.predict({**start, **tuned}, z_test)[head], y, strict=False),
                              accuracy(as_received, y, strict=False))


def _fitting(arrays: dict | None, like: dict) -> dict | None:
    """`arrays` if it has exactly the names and shapes of `like`, else None (start afresh)."""
    if arrays is None or set(arrays) != set(like):
        return None
    return arrays if all(np.shape(arrays[k]) == np.shape(v) for k, v in like.items()) else None


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
