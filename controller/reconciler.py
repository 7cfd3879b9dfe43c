"""The reconciler: a level-based, idempotent loop from stored specs to Ray jobs and back.

Each pass reads every object from the store and acts on the difference between its status and
what Ray reports:
- deletion requested: stop its Ray jobs and forget them once Ray is done with them, delete
  its storage prefix, remove it; a PretrainedModel that a model still starts from
  (`pretrained_users`) waits until they finish;
- Running: read its Ray job (by the deterministic submission id), tail the job's event lines
  into status and the Prometheus collectors, and on a terminal Ray state finish, retry
  (attempt + 1, the job resumes from its last snapshot) or fail;
- Pending/Queued: check dependencies (a Model waits for its Dataset), then the queue
  (priority, concurrent jobs, GPUs, CPUs); `status.waitingFor` says why a job waits.
An attempt is recorded in the store *before* it is submitted, and submitting an id Ray already
knows re-attaches, so a controller killed at any point and restarted never runs a job twice.
A failed attempt is retried (up to spec.maxRetries) unless the job exited with code 2, the
jobs' convention for "bad input" (retrying cannot help); the failure message is the one of the
job's `done` event when it sent one, else the end of its log.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from controller import entrypoints
from controller.metrics import Metrics
from controller.queue import Capacity, demand, order_key
from controller.ray_backend import RayBackend, RayUnavailable, submission_id
from controller.settings import Settings
from controller.store import Conflict, NotFound, Store
from controller.tail import AttemptTail, apply_stats, merge_events
from jobs import layout
from jobs.events import EVENTS_FILE, Event, parse_jsonl
from jobs.specs import (
    Condition,
    Dataset,
    JobStatus,
    Model,
    Phase,
    PretrainedModel,
    Resource,
)
from jobs.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

ABORT_ANNOTATION = "kdigits.io/abort-requested"
BAD_INPUT_EXIT_CODE = 2  # a job exiting 2 rejected its input: retrying cannot help
RESOURCES_TTL_S = 10.0
# Ray's job manager keeps watching a job's supervisor actor after the job ends; a record deleted
# before that actor is gone comes back as FAILED ("Job supervisor actor died"). A finished job
# is deleted once it has been over this long, and the deletion confirmed on a later pass.
JOB_SETTLE_S = 5.0
LOG_BYTES_PER_S = 2_000_000  # a 2 MB log is read at most once a second


def now() -> datetime:
    return datetime.now(UTC)


def metric_label(obj: Resource) -> str:
    """The `model`/`dataset` label value: the name, namespaced outside `default`."""
    meta = obj.metadata
    return meta.name if meta.namespace == "default" else f"{meta.namespace}/{meta.name}"


def prefix_of(obj: Resource) -> str:
    uid = str(obj.metadata.uid)
    if isinstance(obj, Dataset):
        return layout.dataset_prefix(uid)
    if isinstance(obj, Model):
        return layout.model_prefix(uid)
    return layout.pretrained_prefix(uid)


def pretrained_users(store: Store, name: str, namespace: str) -> list[str]:
    """The models that start from PretrainedModel `name` (`spec.network.pretrained.name`, same
    namespace) and have not finished (Pending, Queued or Running; not those being deleted).
    While there are any, the pretrained model's files must stay: REST refuses the delete (409)
    and the reconciler holds a deletion that got past it (kubectl, or a race)."""
    return sorted(
        m.metadata.name
        for m in store.list("Model", namespace).items
        if isinstance(m, Model)
        and m.spec.network.pretrained is not None
        and m.spec.network.pretrained.name == name
        and not m.status.phase.terminal
        and m.metadata.deletion_timestamp is None
    )


def log_key(obj: Resource, attempt: int) -> str:
    return f"{prefix_of(obj)}logs/attempt-{attempt}.log"


def _set_ready_condition(status: JobStatus) -> None:
    phase = status.phase
    value = "True" if phase == Phase.SUCCEEDED else ("False" if phase.terminal else "Unknown")
    message = status.message if phase.terminal else (status.waiting_for or status.message)
    old = next((c for c in status.conditions if c.type == "Ready"), None)
    if old and old.status == value and old.reason == phase.value and old.message == message:
        return
    changed = old is None or old.status != value
    cond = Condition(
        type="Ready",
        status=value,
        reason=phase.value,
        message=message,
        last_transition_time=now() if changed else old.last_transition_time,  # type: ignore[union-attr]
    )
    status.conditions = [c for c in status.conditions if c.type != "Ready"] + [cond]


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        objects: ObjectStore,
        backend: RayBackend,
        metrics: Metrics,
        dataset_command: Callable[[Dataset], str] | None = None,
        model_command: Callable[[Model, str, str | None], str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.objects = objects
        self.backend = backend
        self.metrics = metrics
        self._dataset_command = dataset_command or self._default_dataset_command
        self._model_command = model_command or self._default_model_command
        self._tails: dict[str, AttemptTail] = {}
        self._tails_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._resources: tuple[float, dict[str, float], dict[str, float]] | None = None
        self.passes = 0
        self.last_error: str | None = None
        # Which waiting objects may start; cluster mode starts only admitted ones (operator).
        self.admitted: Callable[[Resource], bool] = lambda _obj: True

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.rebuild_metrics()
        self._thread = threading.Thread(target=self._loop, name="kdigits-reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            started = time.perf_counter()
            try:
                self.run_once()
                self.last_error = None
            except Exception as error:  # noqa: BLE001 - the loop must survive anything
                self.metrics.reconcile_errors.inc()
                self.last_error = f"{type(error).__name__}: {error}"
                log.exception("reconcile pass failed")
            self.metrics.reconcile_duration.observe(time.perf_counter() - started)
            self.passes += 1
            self._wake.wait(self.settings.reconcile_interval)

    def rebuild_metrics(self) -> None:
        """Gauges from stored status, so a restarted controller shows every series."""
        for model in self.store.list("Model").items:
            assert isinstance(model, Model)
            self.metrics.set_model_status(
                metric_label(model), model.status.epoch, model.status.metrics
            )
        for dataset in self.store.list("Dataset").items:
            assert isinstance(dataset, Dataset)
            self.metrics.set_dataset_images(metric_label(dataset), dataset.status.images)

    # ------------------------------------------------------------------ one pass

    def run_once(self) -> None:
        for kind in ("Dataset", "Model", "PretrainedModel"):
            for obj in self.store.list(kind).items:
                if obj.metadata.deletion_timestamp is not None:
                    self._guard(self._finalize, obj)
        for kind in ("Dataset", "Model"):
            for obj in self.store.list(kind).items:
                status: JobStatus = obj.status  # type: ignore[attr-defined]
                if obj.metadata.deletion_timestamp is None and status.phase == Phase.RUNNING:
                    self._guard(self._poll, obj)
        self._schedule()

    def _guard(self, action: Callable[[Any], None], obj: Resource) -> None:
        try:
            action(obj)
        except (Conflict, NotFound):
            pass  # changed or gone meanwhile: the next pass sees the new state
        except RayUnavailable as error:
            self.metrics.reconcile_errors.inc()
            self.last_error = str(error)
            log.warning("%s", error)

    def _save(self, obj: Resource, status: JobStatus) -> Resource | None:
        _set_ready_condition(status)
        if status == obj.status:  # type: ignore[attr-defined]
            return obj
        new = obj.model_copy(update={"status": status})
        try:
            return self.store.update_status(new)
        except (Conflict, NotFound):
            return None

    # ------------------------------------------------------------------ running jobs

    def _tail(self, sid: str) -> AttemptTail:
        with self._tails_lock:
            tail = self._tails.get(sid)
            if tail is None:
                tail = self._tails[sid] = AttemptTail(sid)
            return tail

    def _poll(self, obj: Resource) -> None:
        status: JobStatus = obj.status.model_copy(deep=True)  # type: ignore[attr-defined]
        sid = status.submission_id
        aborting = ABORT_ANNOTATION in obj.metadata.annotations
        if sid is None:  # should not happen: Running is always recorded with an id
            status.phase = Phase.QUEUED
            self._save(obj, status)
            return
        info = self.backend.info(sid)
        if info is None:
            if aborting:
                self._finish(obj, status, Phase.ABORTED, "aborted")
                return
            log.info("Ray does not know %s: submitting it", sid)
            self._ray_submit(obj)
            return
        tail = self._tail(sid)
        if info.terminal or time.monotonic() >= tail.next_read:
            # The Jobs API returns the whole log: read big logs less often.
            text, tail.offset = self.backend.logs(sid, tail.offset)
            tail.next_read = time.monotonic() + tail.offset / LOG_BYTES_PER_S
            for event in tail.feed(text, final=info.terminal):
                self._observe(obj, event)
        self._overlay(obj, tail, status)
        if not info.terminal:
            if aborting:
                self.backend.stop(sid)
                status.message = "aborting"
            elif tail.stage:
                status.message = tail.stage
            elif info.status == "PENDING":
                status.message = "waiting for Ray to start the job"
            self._save(obj, status)
            return
        self._save_log(obj, status.attempt, sid)
        failure = tail.failed_message
        if info.status == "SUCCEEDED" and failure is None:
            self._succeed(obj, status)
        elif info.status == "STOPPED" or aborting:
            message = "aborted" if aborting else f"stopped in Ray: {info.message}"
            self._finish(obj, status, Phase.ABORTED, message)
        else:
            permanent = _exit_code(info.message) == BAD_INPUT_EXIT_CODE
            message = failure or _failure_summary(info.message, tail.last_lines)
            retries = getattr(obj.spec, "max_retries", 0)  # type: ignore[attr-defined]
            if not permanent and status.attempt <= retries:
                status.phase = Phase.QUEUED
                status.message = f"attempt {status.attempt} failed: {message}; retrying"
                status.waiting_for = "a retry"
                self._save(obj, status)
                self.wake()
            else:
                self._finish(obj, status, Phase.FAILED, message)

    def _overlay(self, obj: Resource, tail: AttemptTail, status: JobStatus) -> None:
        if isinstance(obj, Model):
            tail.overlay_model(status)  # type: ignore[arg-type]
        elif isinstance(obj, Dataset):
            tail.overlay_dataset(status)  # type: ignore[arg-type]

    def _observe(self, obj: Resource, event: Event) -> None:
        label = metric_label(obj)
        if isinstance(obj, Model):
            if event.get("kind") == "metric":
                self.metrics.set_model_metric(
                    label, str(event.get("name")), event.get("split"), event.get("value")
                )
            epoch = event.get("epoch")
            if isinstance(epoch, int | float) and event.get("kind") in ("progress", "metric"):
                self.metrics.training_epoch.labels(label).set(epoch)
        elif isinstance(obj, Dataset) and event.get("kind") == "stats":
            images = event.get("images")
            if isinstance(images, dict):
                self.metrics.set_dataset_images(label, images)

    def _succeed(self, obj: Resource, status: JobStatus) -> None:
        prefix = prefix_of(obj)
        if isinstance(obj, Dataset):
            try:
                stats = json.loads(self.objects.get_bytes(f"{prefix}stats.json"))
            except (ObjectNotFound, ValueError):
                self._finish(obj, status, Phase.FAILED, "the build finished without stats.json")
                return
            apply_stats(status, stats)  # type: ignore[arg-type]
            self.metrics.set_dataset_images(metric_label(obj), status.images)  # type: ignore[attr-defined]
        elif isinstance(obj, Model):
            stored = AttemptTail("events.jsonl")
            for event in self.stored_events(obj):
                stored.apply(event)
            merged = status.model_copy(deep=True)
            stored.overlay_model(merged)  # type: ignore[arg-type]
            self._overlay(obj, self._tail(str(status.submission_id)), merged)
            status = merged
            self.metrics.set_model_status(metric_label(obj), merged.epoch, merged.metrics)  # type: ignore[attr-defined]
        status.progress = 1.0
        status.eta = 0.0
        self._finish(obj, status, Phase.SUCCEEDED, "")

    def _finish(self, obj: Resource, status: JobStatus, phase: Phase, message: str) -> None:
        status.phase = phase
        status.message = message
        status.waiting_for = None
        status.completion_time = now()
        if status.start_time is not None:
            kind = obj.kind.lower()  # type: ignore[attr-defined]
            elapsed = (status.completion_time - status.start_time).total_seconds()
            self.metrics.job_duration.labels(kind).observe(max(0.0, elapsed))
        self._save(obj, status)

    def _save_log(self, obj: Resource, attempt: int, sid: str) -> None:
        try:
            text, _ = self.backend.logs(sid, 0)
            if text:
                self.objects.put_bytes(log_key(obj, attempt), text.encode())
        except Exception as error:  # noqa: BLE001 - the log copy is best effort
            log.warning("could not keep the log of %s: %s", sid, error)

    # ------------------------------------------------------------------ queue

    def _capacity(self) -> Capacity:
        total: dict[str, float] = {}
        stamp = self._resources
        if stamp is None or time.monotonic() - stamp[0] > RESOURCES_TTL_S:
            try:
                res = self.backend.resources()
                self._resources = (time.monotonic(), res.total, res.available)
            except RayUnavailable as error:
                self.last_error = str(error)
        if self._resources is not None:
            total = self._resources[1]
        s = self.settings
        max_gpus = s.max_gpus if s.max_gpus is not None else total.get("GPU", 0.0)
        max_cpus = s.max_cpus if s.max_cpus is not None else total.get("CPU")
        return Capacity(max_jobs=s.max_running_jobs, max_gpus=max_gpus, max_cpus=max_cpus)

    def _schedule(self) -> None:
        datasets = [d for d in self.store.list("Dataset").items if isinstance(d, Dataset)]
        models = [m for m in self.store.list("Model").items if isinstance(m, Model)]
        capacity = self._capacity()
        waiting: list[Resource] = []
        for obj in [*datasets, *models]:
            status: JobStatus = obj.status  # type: ignore[attr-defined]
            if obj.metadata.deletion_timestamp is not None:
                continue
            if status.phase == Phase.RUNNING:
                capacity.add(demand(obj))
            elif status.phase in (Phase.PENDING, Phase.QUEUED) and self.admitted(obj):
                waiting.append(obj)
        by_name = {(d.metadata.namespace, d.metadata.name): d for d in datasets}
        for obj in sorted(waiting, key=order_key):
            status = obj.status.model_copy(deep=True)  # type: ignore[attr-defined]
            if ABORT_ANNOTATION in obj.metadata.annotations:
                self._finish(obj, status, Phase.ABORTED, "aborted before it started")
                continue
            if isinstance(obj, Model):
                verdict, reason = self._model_dependencies(obj, by_name)
                if verdict == "fail":
                    self._finish(obj, status, Phase.FAILED, reason)
                    continue
                if verdict == "wait":
                    self._queue(obj, status, reason)
                    continue
            need = demand(obj)
            blocker = capacity.blocked_by(need)
            if blocker is not None:
                self._queue(obj, status, blocker)
                continue
            if self._start(obj, status):
                capacity.add(need)

    def _queue(self, obj: Resource, status: JobStatus, reason: str) -> None:
        status.phase = Phase.QUEUED
        status.waiting_for = reason
        if not status.message.startswith("attempt "):
            status.message = f"waiting for {reason}"
        self._save(obj, status)

    def _model_dependencies(
        self, model: Model, datasets: dict[tuple[str, str], Dataset]
    ) -> tuple[str, str]:
        """("ok" | "wait" | "fail", reason)."""
        ns = model.metadata.namespace
        dataset = datasets.get((ns, model.spec.dataset))
        name = model.spec.dataset
        if dataset is None or dataset.metadata.deletion_timestamp is not None:
            return "fail", f'dataset "{name}" does not exist'
        phase = dataset.status.phase
        if phase in (Phase.FAILED, Phase.ABORTED):
            detail = f": {dataset.status.message}" if dataset.status.message else ""
            return "fail", f'dataset "{name}" {phase.value.lower()}{detail}'
        if phase != Phase.SUCCEEDED:
            return "wait", f'dataset "{name}" to succeed (it is {phase.value})'
        network = model.spec.network
        custom_python = network.custom is not None and network.custom.python is not None
        if custom_python and not self.settings.allow_custom_python:
            return "fail", (
                "spec.network.custom.python: custom Python networks are disabled "
                "(set KDIGITS_ALLOW_CUSTOM_PYTHON)"
            )
        try:
            self.init_from(model)
        except _Wait as wait:
            return "wait", str(wait)
        except _Fail as fail:
            return "fail", str(fail)
        return "ok", ""

    def init_from(self, model: Model) -> str | None:
        """Object-store prefix to initialise weights from (previous or pretrained network)."""
        network, ns = model.spec.network, model.metadata.namespace
        if network.previous is not None:
            ref = network.previous
            try:
                prev = self.store.get("Model", ref.model, ns)
            except NotFound:
                raise _Fail(
                    f'spec.network.previous.model: model "{ref.model}" does not exist'
                ) from None
            assert isinstance(prev, Model)
            snaps = prev.status.snapshots
            if ref.epoch is not None:
                snaps = [s for s in snaps if abs(s.epoch - ref.epoch) < 1e-6]
            if snaps:
                return snaps[-1].key
            which = f"epoch {ref.epoch:g}" if ref.epoch is not None else "any epoch"
            if prev.status.phase.terminal:
                raise _Fail(f'model "{ref.model}" has no snapshot at {which}')
            raise _Wait(f'a snapshot of model "{ref.model}" at {which}')
        if network.pretrained is not None:
            try:
                pre = self.store.get("PretrainedModel", network.pretrained.name, ns)
            except NotFound:
                name = network.pretrained.name
                raise _Fail(f'spec.network.pretrained.name: "{name}" does not exist') from None
            return layout.pretrained_prefix(str(pre.metadata.uid))
        return None

    def _start(self, obj: Resource, status: JobStatus) -> bool:
        """Record the next attempt, then submit it (in that order)."""
        spec_json = obj.spec.to_json_dict()  # type: ignore[attr-defined]
        self.objects.put_bytes(f"{prefix_of(obj)}spec.json", json.dumps(spec_json).encode())
        status.attempt += 1
        sid = submission_id(obj.kind, str(obj.metadata.uid), status.attempt)  # type: ignore[attr-defined]
        status.phase = Phase.RUNNING
        status.submission_id = sid
        status.waiting_for = None
        status.message = f"submitted to Ray as {sid}"
        status.start_time = status.start_time or now()
        status.completion_time = None
        status.observed_generation = obj.metadata.generation
        saved = self._save(obj, status)
        if saved is None:
            return False
        try:
            self._ray_submit(saved)
        except RayUnavailable as error:  # recorded: the next pass submits it
            self.last_error = str(error)
            log.warning("could not submit %s yet: %s", sid, error)
        return True

    def _ray_submit(self, obj: Resource) -> None:
        status: JobStatus = obj.status  # type: ignore[attr-defined]
        sid = str(status.submission_id)
        kind = obj.kind.lower()  # type: ignore[attr-defined]
        meta = obj.metadata
        # Drivers reserve no CPU: they only hand out work and wait, and a reserved CPU per
        # driver starves the builds' own tasks when several run on a small head.
        if isinstance(obj, Dataset):
            command, num_cpus = self._dataset_command(obj), 0.0
        else:
            assert isinstance(obj, Model)
            try:
                dataset = self.store.get("Dataset", obj.spec.dataset, meta.namespace)
                init = self.init_from(obj)
            except NotFound:
                self._finish(obj, status.model_copy(), Phase.FAILED, "the dataset is gone")
                return
            except (_Wait, _Fail) as error:
                self._finish(obj, status.model_copy(), Phase.FAILED, str(error))
                return
            command, num_cpus = self._model_command(obj, str(dataset.metadata.uid), init), 0.0
        metadata = {"kdigits.kind": kind, "kdigits.name": meta.name}
        metadata["kdigits.namespace"] = meta.namespace
        if self.backend.submit(sid, command, num_cpus=num_cpus, metadata=metadata):
            self.metrics.job_submissions.labels(kind).inc()
            log.info("submitted %s: %s", sid, command)

    # ------------------------------------------------------------------ deletion

    def _finalize(self, obj: Resource) -> None:
        status: JobStatus | None = getattr(obj, "status", None)
        kind = obj.kind.lower()  # type: ignore[attr-defined]
        pending = False
        if isinstance(obj, PretrainedModel):
            users = pretrained_users(self.store, obj.metadata.name, obj.metadata.namespace)
            if users:  # keep its files until the models that start from it have finished
                held = obj.status.model_copy()
                held.message = f"deletion waits for model(s) {', '.join(users)} to finish"
                self._save(obj, held)
                return
        if not isinstance(obj, PretrainedModel) and status is not None:
            for attempt in range(1, status.attempt + 1):
                sid = submission_id(kind, str(obj.metadata.uid), attempt)
                info = self.backend.info(sid)
                if info is None:
                    continue
                pending = True  # gone only once a later pass finds no record
                if not info.terminal:
                    self.backend.stop(sid)
                elif info.end_time is None or time.time() - info.end_time >= JOB_SETTLE_S:
                    self.backend.delete(sid)
                with self._tails_lock:
                    self._tails.pop(sid, None)
        if pending:
            return
        self.objects.delete_prefix(prefix_of(obj))
        if isinstance(obj, Model):
            self.metrics.forget_model(metric_label(obj))
        elif isinstance(obj, Dataset):
            self.metrics.forget_dataset(metric_label(obj))
        meta = obj.metadata
        self.store.remove(obj.kind, meta.name, meta.namespace, str(meta.uid))  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ reads for the API

    def stored_events(self, obj: Resource) -> list[Event]:
        try:
            return parse_jsonl(self.objects.get_bytes(f"{prefix_of(obj)}{EVENTS_FILE}"))
        except ObjectNotFound:
            return []

    def live_events(self, obj: Resource) -> list[Event]:
        status: JobStatus = obj.status  # type: ignore[attr-defined]
        events: list[Event] = []
        with self._tails_lock:
            for attempt in range(1, status.attempt + 1):
                sid = submission_id(obj.kind, str(obj.metadata.uid), attempt)  # type: ignore[attr-defined]
                tail = self._tails.get(sid)
                if tail is not None:
                    events.extend(tail.events)
        return events

    def events(self, obj: Resource) -> list[Event]:
        """Everything the job reported: events.jsonl plus lines not flushed there yet."""
        return merge_events(self.stored_events(obj), self.live_events(obj))

    def job_log(self, obj: Resource, attempt: int | None = None) -> str:
        status: JobStatus = obj.status  # type: ignore[attr-defined]
        attempt = attempt or status.attempt
        if attempt < 1:
            return ""
        sid = submission_id(obj.kind, str(obj.metadata.uid), attempt)  # type: ignore[attr-defined]
        try:
            text, _ = self.backend.logs(sid, 0)
        except RayUnavailable:
            text = ""
        if text:
            return text
        try:
            return self.objects.get_bytes(log_key(obj, attempt)).decode(errors="replace")
        except ObjectNotFound:
            return ""

    def _default_dataset_command(self, dataset: Dataset) -> str:
        s = self.settings
        return entrypoints.dataset_command(
            s.job_python or "python",
            s.object_store_url,
            dataset,
            [str(p) for p in s.data_root_paths],
        )

    def _default_model_command(self, model: Model, dataset_uid: str, init: str | None) -> str:
        s = self.settings
        return entrypoints.model_command(
            s.job_python or "python",
            s.object_store_url,
            model,
            dataset_uid,
            init,
            allow_custom_python=s.allow_custom_python,
        )


class _Wait(Exception):
    pass


class _Fail(Exception):
    pass


def _exit_code(ray_message: str) -> int | None:
    match = re.search(r"exit code (\d+)", ray_message or "")
    return int(match.group(1)) if match else None


def _failure_summary(ray_message: str, last_lines: list[str]) -> str:
    """A short reason: the last lines of the log beat Ray's generic message."""
    lines = [line for line in last_lines if line.strip() and "job_manager.py" not in line]
    tail = " | ".join(line.strip() for line in lines[-3:])
    first = (ray_message or "the job failed").split("\n")[0].split(", last available logs")[0]
    return f"{first}: {tail}"[:2000] if tail else first[:2000]
