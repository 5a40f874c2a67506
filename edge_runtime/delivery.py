"""Model delivery: getting a task's model artifacts and its round's params onto the device.

Two things a task may wait for before it trains. Its model's artifacts: installed, or fetched
file by file over the wire and verified against the task's manifest hash (fetch.py). Its
round's params: inline in the task, or assembled from the round's retained model parts
(kernel/round_model.py); while any task waits for parts the device subscribes to them, and
a task whose parts do not come in `model_wait_s` asks for an inline copy.

It publishes its own requests (FetchRequest) and says which tasks are ready or cannot be
served; the agent turns that into task events. Time comes in as arguments; it never sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .fetch import ArtifactDownload
from .fetched_models import mark_used, prune_fetched
from .kernel.codec import encode_message
from .kernel.errors import ArtifactError, RoundModelError, TransportError
from .kernel.manifest import MANIFEST_FILE, check_model_id, manifest_hash
from .kernel.protocol import MODEL_PARTS_FILTER, ArtifactFile, FetchRequest, ModelPart, TrainTask
from .kernel.round_model import ModelWaits
from .kernel.transport.base import Transport
from .task import Refused

log = logging.getLogger("fedge.agent")

Publish = Callable[[str, bytes], None]  # (channel, payload)
# What tasks waiting for a model download may hold. Each keeps its params (up to
# max_message_bytes, unchecked until it trains) until the model comes or fetch_timeout_s passes,
# and each model id starts a download that may stage MAX_MODEL_BYTES: a coordinator naming one
# model again and again, or a new model each time, grew the device's memory and disk without
# bound. Past either limit a task is declined as FETCH_BACKLOG (not permanent: it clears as
# downloads finish or time out).
TASKS_PER_DOWNLOAD = 4
MAX_DOWNLOADS = 2
FETCH_BACKLOG = "fetch_backlog"
WAITING = None  # resolve_params: the task waits for its round's model parts


@dataclass
class _Download:
    tasks: list[TrainTask]  # every task waiting for this model
    download: ArtifactDownload
    started: float  # clock seconds


class ModelDelivery:
    def __init__(self, runtime, transport: Transport, publish: Publish, artifacts_dir: Path, max_message_bytes: int,
                 fetch_timeout_s: float, model_wait_s: float):
        self.runtime = runtime
        self.device_id = runtime.device_id
        self.transport = transport
        self.publish = publish
        self.artifacts_dir = artifacts_dir
        self.fetch_timeout_s = fetch_timeout_s  # seconds
        self.model_wait_s = model_wait_s  # seconds
        self.model_waits = ModelWaits(max_message_bytes)
        self.waiting: dict[str, _Download] = {}  # model_id -> the download under way
        self.parts_subscribed = False

    # ------------------------------------------------------------------ artifacts

    def model_ready(self, task: TrainTask, now: float) -> bool | Refused:
        """True if the task's model is installed and matches the task's manifest hash; else a
        download starts (or joins one under way) and the task waits for it (False)."""
        installed = self.runtime.model_dirs.get(task.model_id)
        try:
            fetched = self.artifacts_dir / check_model_id(task.model_id)  # never a path out of artifacts_dir
        except ArtifactError as exc:
            return Refused(exc.reason, str(exc))
        for directory in (installed, fetched):
            if directory is None or not (Path(directory) / MANIFEST_FILE).exists():
                continue
            if task.manifest_sha256 and manifest_hash(Path(directory)) != task.manifest_sha256:
                log.warning("device %s: model %s in %s does not match the task's manifest hash (or cannot be read); "
                            "fetching it", self.device_id, task.model_id, directory)
                continue
            try:
                if directory != installed:
                    self.runtime.add_model(task.model_id, directory)
            except ArtifactError as exc:
                log.warning("device %s: installed model %s is unusable: %s", self.device_id, task.model_id, exc)
                continue
            mark_used(Path(directory))
            return True
        if task.model_id in self.waiting:
            entry = self.waiting[task.model_id]
            if len(entry.tasks) >= TASKS_PER_DOWNLOAD:
                return Refused(FETCH_BACKLOG, f"{len(entry.tasks)} tasks wait for model {task.model_id} already; "
                               f"this device holds at most {TASKS_PER_DOWNLOAD}")
            entry.tasks.append(task)
            return False
        if len(self.waiting) >= MAX_DOWNLOADS:
            return Refused(FETCH_BACKLOG, f"{len(self.waiting)} model downloads under way; this device runs at most "
                           f"{MAX_DOWNLOADS} at once")
        try:
            download = ArtifactDownload(task.model_id, task.manifest_sha256, fetched)
        except ArtifactError as exc:
            return Refused(exc.reason, str(exc))
        self.waiting[task.model_id] = _Download([task], download, now)
        self._request_files(task, download)
        log.info("device %s: fetching model %s for task %s", self.device_id, task.model_id, task.task_id)
        return False

    def on_artifact(self, item: ArtifactFile) -> tuple[list[TrainTask], list[tuple[TrainTask, Refused]]]:
        """Take one file; (tasks whose model is now installed, tasks that cannot have it)."""
        entry = self.waiting.get(item.model_id)
        if entry is None:
            return [], []  # a late or repeated file for a model we already have
        if item.path != MANIFEST_FILE and entry.download.manifest is None:
            return [], []  # a straggler from an earlier transfer; the manifest comes first in every transfer
        if item.path in entry.download.received:
            return [], []
        try:
            done = entry.download.accept(item)
        except ArtifactError as exc:
            del self.waiting[item.model_id]
            entry.download.discard()
            log.warning("device %s: artifact %s of model %s refused: %s", self.device_id, item.path, item.model_id, exc)
            return [], [(task, Refused(exc.reason, str(exc))) for task in entry.tasks]
        if not done:
            return [], []
        del self.waiting[item.model_id]
        try:
            self.runtime.add_model(item.model_id, entry.download.dest)
        except ArtifactError as exc:
            return [], [(task, Refused(exc.reason, str(exc))) for task in entry.tasks]
        log.info("device %s: model %s installed and verified", self.device_id, item.model_id)
        for gone in prune_fetched(self.artifacts_dir, {item.model_id, *self.waiting}):
            self.runtime.forget_model(gone, self.artifacts_dir / gone)
        return entry.tasks, []

    def request_again(self, task: TrainTask) -> bool:
        """Ask again for the files of the task's model if the task waits for a download under
        way. Not for a task that trained: a download of its model id for a later task (a new
        manifest hash) answered its copy with that FetchRequest, and its kept Update waited for
        the next resend (up to republish_s * 2**5) instead of going out again at once."""
        entry = self.waiting.get(task.model_id)
        if entry is None or all(waiting.task_id != task.task_id for waiting in entry.tasks):
            return False
        self._request_files(entry.tasks[0], entry.download)
        return True

    def _request_files(self, task: TrainTask, download: ArtifactDownload) -> None:
        files = download.missing() if download.manifest is not None else ()
        self.publish("fetch", encode_message(FetchRequest(self.device_id, task.model_id, files)))

    # ------------------------------------------------------------------ round model

    def resolve_params(self, task: TrainTask, now: float) -> TrainTask | Refused | None:
        """The task with its params filled in, Refused, or WAITING for the round's parts."""
        new_model = bool(task.round_model_sha256) and not self.model_waits.awaits(task.round_model_sha256)
        try:
            filled = self.model_waits.resolve(task, now)
        except RoundModelError as exc:
            return Refused(exc.reason, str(exc))
        if filled is None:
            # Already listening (for an earlier round's parts), this round's parts may have come
            # live before this task named them, and were dropped: subscribing again has the
            # broker send the retained ones once more.
            self.sync_subscription(refresh=new_model)
        return filled

    def waits_for_parts(self, task_id: str) -> bool:
        return self.model_waits.waiting(task_id)

    def take_inline(self, task: TrainTask) -> bool:
        """True if `task` is the inline copy a waiting task asked for (it stops waiting)."""
        if task.round_model_sha256 or not self.model_waits.take(task.task_id):
            return False
        self.sync_subscription()
        return True

    def on_part(self, part: ModelPart) -> list[TrainTask]:
        """Take one model part; the tasks whose params are now complete."""
        ready, inline, why = self.model_waits.on_part(part)
        for task in inline:
            log.warning("device %s: round model for task %s refused (%s); asking for it inline", self.device_id,
                        task.task_id, why)
            self._request_inline(task)
        self.sync_subscription()
        return ready

    def _request_inline(self, task: TrainTask) -> None:
        self.publish("fetch", encode_message(FetchRequest(self.device_id, task.model_id, task_id=task.task_id)))

    def sync_subscription(self, refresh: bool = False) -> None:
        """Subscribed to the model parts only while a task waits for them: the broker then sends
        the retained parts once per round to the devices that train, not to the whole fleet.
        refresh: subscribe again even if subscribed, for the retained parts."""
        want = self.model_waits.listening
        if want == self.parts_subscribed and not (want and refresh):
            return
        try:
            if want:
                self.transport.subscribe(MODEL_PARTS_FILTER)
            else:
                self.transport.unsubscribe(MODEL_PARTS_FILTER)
        except TransportError:
            return  # the link is down: the next tick tries again
        self.parts_subscribed = want

    # ------------------------------------------------------------------ time and link

    def timeouts(self, now: float) -> Iterator[tuple[TrainTask, Refused]]:
        """Tasks that waited too long, as they are found. A generator, so the caller's declines
        and the inline requests made here go out in the order they are decided."""
        for model_id, entry in list(self.waiting.items()):
            if now - entry.started > self.fetch_timeout_s:
                del self.waiting[model_id]
                entry.download.discard()
                for task in entry.tasks:
                    yield task, Refused("artifact_fetch_timeout",
                                        f"model {model_id}: still missing {entry.download.missing() or 'manifest'}")
        for task in self.model_waits.overdue(now, self.model_wait_s):
            log.info("device %s: round model for task %s not complete after %g s; asking for it inline",
                     self.device_id, task.task_id, self.model_wait_s)
            self._request_inline(task)
        for task in self.model_waits.expired(now, self.model_wait_s + self.fetch_timeout_s):
            yield task, Refused("round_model_timeout", "neither the round's model parts nor an inline task came")
        self.sync_subscription()

    def on_reconnect(self) -> None:
        """The broker may have lost the requests in flight: ask again."""
        for entry in self.waiting.values():
            self._request_files(entry.tasks[0], entry.download)
        for task in self.model_waits.asked_inline():
            self._request_inline(task)
