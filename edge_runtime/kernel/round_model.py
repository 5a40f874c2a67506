"""A round's model published once: split an encoded RoundModel into ModelParts, join them
back on the device, and fill a task from it. Pure functions and one small collector; the
agent and the coordinator do the publishing."""

from __future__ import annotations

import dataclasses
import hashlib

from .codec import decode_message, encode_message
from .errors import CodecError, RoundModelError
from .protocol import ModelPart, RoundModel, TrainTask


def split_round_model(model: RoundModel, part_bytes: int) -> tuple[str, list[ModelPart]]:
    """(sha256 of the encoded model, its parts of at most `part_bytes` data each)."""
    if part_bytes < 1:
        raise ValueError("part_bytes must be >= 1")
    blob = encode_message(model)
    digest = hashlib.sha256(blob).hexdigest()
    count = -(-len(blob) // part_bytes)
    return digest, [ModelPart(digest, i, count, blob[i * part_bytes:(i + 1) * part_bytes]) for i in range(count)]


class ModelAssembly:
    """Collects the parts of one RoundModel, named by its hash; parts of any other model are
    ignored (a retained part of an earlier round, or one the broker redelivered)."""

    def __init__(self, sha256: str, max_bytes: int):
        self.sha256 = sha256
        self.max_bytes = max_bytes
        self.parts: dict[int, bytes] = {}
        self.count = 0
        self.size = 0

    def accept(self, part: ModelPart) -> RoundModel | None:
        """The model once every part is in and the hash matches; None while parts are missing."""
        if part.sha256 != self.sha256 or part.index in self.parts:
            return None
        if not part.data:  # split_round_model never makes one; empty parts would cost memory, not bytes
            raise RoundModelError(f"part {part.index} of {self.sha256[:12]} carries no bytes")
        if part.count < 1 or not 0 <= part.index < part.count or (self.count and part.count != self.count):
            raise RoundModelError(f"part {part.index} of {part.count} contradicts the other parts of "
                                  f"{self.sha256[:12]}")
        self.count = part.count
        self.size += len(part.data)
        if self.size > self.max_bytes:
            raise RoundModelError(f"round model {self.sha256[:12]} exceeds {self.max_bytes} bytes")
        self.parts[part.index] = part.data
        if len(self.parts) < self.count:
            return None
        blob = b"".join(self.parts[i] for i in range(self.count))
        if hashlib.sha256(blob).hexdigest() != self.sha256:
            raise RoundModelError(f"round model parts do not hash to {self.sha256[:12]}")
        try:
            model = decode_message(blob, max_bytes=self.max_bytes)
        except CodecError as exc:
            raise RoundModelError(f"round model {self.sha256[:12]} does not decode: {exc}") from None
        if not isinstance(model, RoundModel):
            raise RoundModelError(f"{self.sha256[:12]} is a {type(model).__name__}, not a RoundModel")
        return model


def fill_task(task: TrainTask, model: RoundModel) -> TrainTask:
    """The task with the round model's params and correction inline. The hash already ties the
    model to the task; the ids are checked so that a coordinator bug cannot train the wrong one."""
    if (model.model_id, model.model_version, model.round_id) != (task.model_id, task.model_version, task.round_id):
        raise RoundModelError(f"round model {model.model_id} v{model.model_version} round {model.round_id} does not "
                              f"belong to task {task.task_id} ({task.model_id} v{task.model_version} round "
                              f"{task.round_id})")
    return dataclasses.replace(task, params=model.params, correction=model.correction, round_model_sha256="")


@dataclasses.dataclass
class _Wait:
    assembly: ModelAssembly
    started: float
    tasks: list[TrainTask] = dataclasses.field(default_factory=list)
    inline: bool = False  # gave up on the parts; the tasks were asked for inline


def _give_up(wait: _Wait) -> None:
    """Its tasks are asked for inline from now on: the parts held so far go."""
    wait.inline = True
    wait.assembly.parts.clear()
    wait.assembly.size = 0


class ModelWaits:
    """Tasks waiting for their round's model, by the model's hash, and the last model
    assembled. No I/O and no clock: the agent passes `now`, subscribes while `listening`,
    and sends the FetchRequests these methods name."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.latest: tuple[str, RoundModel] | None = None
        self._waits: dict[str, _Wait] = {}

    @property
    def listening(self) -> bool:
        """True while some task still expects its model from the parts."""
        return any(not w.inline for w in self._waits.values())

    def resolve(self, task: TrainTask, now: float) -> TrainTask | None:
        """The task with its params inline, or None: it now waits for the parts."""
        sha = task.round_model_sha256
        if not sha:
            return task
        if self.latest is not None and self.latest[0] == sha:
            return fill_task(task, self.latest[1])
        wait = self._waits.setdefault(sha, _Wait(ModelAssembly(sha, self.max_bytes), now))
        wait.tasks.append(task)
        return None

    def on_part(self, part: ModelPart) -> tuple[list[TrainTask], list[TrainTask], str]:
        """(tasks now ready, tasks to ask for inline because the parts were bad, why)."""
        wait = self._waits.get(part.sha256)
        if wait is None or wait.inline:
            return [], [], ""
        try:
            # One budget for every model awaited: a task per hash and up to max_bytes of parts
            # for each held one device's memory many times over.
            if self.held() + len(part.data) > self.max_bytes and part.index not in wait.assembly.parts:
                raise RoundModelError(f"round models awaited would hold over {self.max_bytes} bytes")
            model = wait.assembly.accept(part)
        except RoundModelError as exc:
            _give_up(wait)
            return [], list(wait.tasks), str(exc)
        if model is None:
            return [], [], ""
        del self._waits[part.sha256]
        self.latest = (part.sha256, model)
        ready, refused, why = [], [], ""
        for task in wait.tasks:
            try:
                ready.append(fill_task(task, model))
            except RoundModelError as exc:  # the hash matched, the ids did not: a coordinator bug
                refused.append(task)
                why = str(exc)
        if refused:  # still waiting, now for the inline copies
            self._waits[part.sha256] = dataclasses.replace(wait, tasks=refused, inline=True)
        return ready, refused, why

    def overdue(self, now: float, wait_s: float) -> list[TrainTask]:
        """Tasks whose parts did not all come within wait_s: ask for them inline (once)."""
        late = []
        for wait in self._waits.values():
            if not wait.inline and now - wait.started > wait_s:
                _give_up(wait)
                late.extend(wait.tasks)
        return late

    def held(self) -> int:
        """Bytes of parts held, over every model awaited."""
        return sum(w.assembly.size for w in self._waits.values())

    def expired(self, now: float, give_up_s: float) -> list[TrainTask]:
        """Tasks that got neither the parts nor an inline copy within give_up_s; forgotten."""
        gone = [sha for sha, w in self._waits.items() if now - w.started > give_up_s]
        return [task for sha in gone for task in self._waits.pop(sha).tasks]

    def take(self, task_id: str) -> bool:
        """Forget a waiting task (its inline copy came); True if it was waiting."""
        for sha, wait in list(self._waits.items()):
            kept = [t for t in wait.tasks if t.task_id != task_id]
            if len(kept) != len(wait.tasks):
                wait.tasks = kept
                if not kept:
                    del self._waits[sha]
                return True
        return False

    def asked_inline(self) -> list[TrainTask]:
        return [t for w in self._waits.values() if w.inline for t in w.tasks]

    def awaits(self, sha256: str) -> bool:
        """True if some task already waits for (or gave up on) the parts of this model."""
        return sha256 in self._waits

    def waiting(self, task_id: str) -> bool:
        return any(t.task_id == task_id for w in self._waits.values() for t in w.tasks)
