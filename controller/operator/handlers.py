"""The kopf handlers: Dataset, Model and PretrainedModel events in, the shared reconciler out.

The reconciler (controller.reconciler) is the one place that acts on objects, for REST and for
kubectl alike; these handlers only add what a Kubernetes operator owes on top of it:
- create: objects made with kubectl get the admission checks REST does (paths inside the data
  roots, S3 hosts allowed, the dataset and network exist) and the contract's own validation,
  which a CRD schema cannot fully express (cross-field rules); a bad spec ends in phase Failed
  with the reason, a Failed event and `kopf.PermanentError`. A good one is annotated
  `kdigits.io/admitted` (the reconciler starts nothing else) and the reconciler is woken.
- resume (operator restart) and a timer on Queued/Running objects: wake the reconciler, so
  progress flows even when its own poll interval is long. A restarted operator re-attaches to
  Ray jobs by their deterministic submission ids: nothing is submitted twice.
- update of the spec: **a spec change to a job that has started is refused.** A job's spec is
  fixed when its attempt starts (`status.observedGeneration` tells which generation runs); the
  change stays in the object but is not applied: the object gets the condition
  `SpecApplied=False` (reason `RefusedWhileRunning` or `RefusedAfterFinish`), the message, and
  a `SpecChangeRefused` Warning event. Create a new Model (or clone one) to train another spec.
  While a job still waits (Pending or Queued) the change is checked like a new object's and
  taken when the job starts.
  An edit the contract refuses (a cross-field rule) fails a waiting job; on a started one it is
  refused the same way, and its status stops following the job until the spec is valid again.
- delete: the finalizer `kdigits.io/finalizer` is kopf's and the store's. The reconciler stops
  the object's Ray jobs, deletes its storage and takes the finalizer off; this handler waits for
  that, and when it does not happen within `finalize_retries` tries (Ray gone, for instance) it
  deletes the storage itself, posts a `FinalizerForced` Warning event naming the Ray jobs it
  could not confirm stopped, and lets the object go, so deletion is never blocked forever.
  (An object whose spec the contract refuses is invisible to the reconciler: this handler stops
  its Ray jobs and deletes its storage itself.)
  A PretrainedModel that models still start from (Pending, Queued or Running ones naming it in
  `spec.network.pretrained.name`) is the exception: REST refuses to delete it (409), but
  `kubectl delete` cannot be refused without a webhook, so the finalizer holds it instead. It
  stays Terminating, with `status.message` naming the models, and this handler retries
  (`kopf.TemporaryError`, shown as an event) without ever forcing, until they have finished or
  are deleted; then the reconciler deletes its files and lets it go.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes.client import Configuration
from pydantic import ValidationError

from controller.api import admission
from controller.api.errors import ApiError
from controller.operator import kube
from controller.operator.events import EventRecorder
from controller.ray_backend import RayUnavailable, submission_id
from controller.reconciler import metric_label, prefix_of, pretrained_users
from controller.services import Services
from controller.store import Conflict, NotFound
from controller.store.kubernetes import ADMITTED_ANNOTATION, KubernetesStore, is_admitted
from jobs import layout
from jobs.specs import (
    GROUP,
    PLURALS,
    VERSION,
    Condition,
    Dataset,
    JobStatus,
    Model,
    Phase,
    Resource,
)

log = logging.getLogger(__name__)

JOB_PLURALS = (PLURALS["Dataset"], PLURALS["Model"])
PREFIXES: dict[str, Callable[[str], str]] = {
    "Dataset": layout.dataset_prefix,
    "Model": layout.model_prefix,
    "PretrainedModel": layout.pretrained_prefix,
}
WAITING = (Phase.PENDING, Phase.QUEUED)
WAIT_STEP_S = 0.2
WRITE_RETRIES = 5


@dataclass
class OperatorContext:
    """What every handler needs; kopf hands it over in `memo.kdigits`."""

    services: Services
    store: KubernetesStore
    events: EventRecorder
    api_configuration: Configuration
    finalize_retries: int = 20
    finalize_delay: float = 3.0


def _ctx(memo: kopf.Memo) -> OperatorContext:
    context = memo["kdigits"]
    assert isinstance(context, OperatorContext)
    return context


def _now() -> datetime:
    return datetime.now(UTC)


def contract_message(error: ValidationError) -> str:
    """The first contract violation as `field.path: reason`."""
    first = error.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if not str(p).startswith("function-"))
    reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {reason}" if where else reason


def _with_condition(status: JobStatus, condition: Condition) -> None:
    status.conditions = [c for c in status.conditions if c.type != condition.type] + [condition]


def _fail(context: OperatorContext, kind: str, name: str, namespace: str, message: str) -> bool:
    """Mark a job that has not started Failed; False if it started meanwhile (its result holds)."""
    for _ in range(WRITE_RETRIES):
        obj = context.store.get(kind, name, namespace)
        status: JobStatus = obj.status.model_copy(deep=True)  # type: ignore[attr-defined]
        if status.phase not in WAITING:
            return False
        status.phase = Phase.FAILED
        status.message = message
        status.waiting_for = None
        status.completion_time = _now()
        status.observed_generation = obj.metadata.generation
        ready = Condition(
            type="Ready",
            status="False",
            reason=Phase.FAILED.value,
            message=message,
            last_transition_time=_now(),
        )
        _with_condition(status, ready)
        try:
            context.store.update_status(obj.model_copy(update={"status": status}))
            return True
        except Conflict:
            continue
    return False


def _fail_raw(context: OperatorContext, body: Mapping[str, Any], message: str) -> None:
    """Mark an object the contract cannot even read Failed, straight on the CR."""
    meta = body.get("metadata", {})
    status = {
        "phase": Phase.FAILED.value,
        "message": message,
        "observedGeneration": meta.get("generation"),
        "completionTime": _now().isoformat(),
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": Phase.FAILED.value,
                "message": message,
                "lastTransitionTime": _now().isoformat(),
            }
        ],
    }
    context.store.patch_status(str(body["kind"]), str(meta["name"]), str(meta["namespace"]), status)
    context.events.post(body, "Warning", Phase.FAILED.value, f"Pending -> Failed: {message}")


def _admission_check(context: OperatorContext, obj: Resource) -> None:
    settings = context.services.settings
    if isinstance(obj, Dataset):
        admission.check_dataset(obj.spec, settings)
    elif isinstance(obj, Model):
        admission.check_model(obj.spec, obj.metadata.namespace, settings, context.store)


# ---------------------------------------------------------------------------- handlers


def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf connects with the controller's own client configuration."""
    return kube.connection_info(_ctx(memo).api_configuration)


def admit(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A new object: the contract and the admission checks, then the reconciler takes it."""
    context = _ctx(memo)
    kind = str(body["kind"])
    try:
        obj = context.store.parse(kind, body)
    except ValidationError as error:
        message = contract_message(error)
        _fail_raw(context, body, message)
        raise kopf.PermanentError(message) from None
    if not is_admitted(obj) and obj.status.phase in WAITING:  # type: ignore[attr-defined]
        try:
            _admission_check(context, obj)
        except ApiError as error:
            message = f"{error.field}: {error.reason}" if error.field else error.reason
            meta = obj.metadata
            _fail(context, kind, meta.name, meta.namespace, message)
            raise kopf.PermanentError(message) from None
        _mark_admitted(context, kind, obj.metadata.name, obj.metadata.namespace)
    context.services.reconciler.wake()


def _mark_admitted(context: OperatorContext, kind: str, name: str, namespace: str) -> None:
    for _ in range(WRITE_RETRIES):
        obj = context.store.get(kind, name, namespace)
        if is_admitted(obj):
            return
        admitted = obj.model_copy(deep=True)
        admitted.metadata.annotations[ADMITTED_ANNOTATION] = "true"
        try:
            context.store.update(admitted)
            return
        except Conflict:
            continue
    raise kopf.TemporaryError("the object kept changing; admitting it again", delay=1)


def resume(memo: kopf.Memo, **_: Any) -> None:
    """The operator (re)started: the reconciler re-attaches to the object's Ray job, if any."""
    _ctx(memo).services.reconciler.wake()


def is_active(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") in (Phase.QUEUED.value, Phase.RUNNING.value)


def heartbeat(memo: kopf.Memo, **_: Any) -> None:
    """Queued or Running: make sure the reconciler pulls progress in at least this often."""
    _ctx(memo).services.reconciler.wake()


def spec_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Taken while the job waits; refused once it has started (see the module docstring)."""
    context = _ctx(memo)
    kind = str(body["kind"])
    meta = body.get("metadata", {})
    name, namespace = str(meta["name"]), str(meta["namespace"])
    for _attempt in range(WRITE_RETRIES):
        try:
            obj = context.store.get(kind, name, namespace)
        except NotFound:
            _refuse_unreadable(context, kind, name, namespace)
            return
        status: JobStatus = obj.status.model_copy(deep=True)  # type: ignore[attr-defined]
        generation = obj.metadata.generation
        if status.phase in WAITING:
            try:  # the new spec gets the checks the old one passed
                _admission_check(context, obj)
            except ApiError as error:
                message = f"{error.field}: {error.reason}" if error.field else error.reason
                _fail(context, kind, name, namespace, message)
                raise kopf.PermanentError(message) from None
            status.observed_generation = generation
            notice = None
        else:
            running = status.phase == Phase.RUNNING
            reason = "RefusedWhileRunning" if running else "RefusedAfterFinish"
            state = "is running" if running else f"has finished ({status.phase.value})"
            notice = (
                f"spec change (generation {generation}) refused: the {kind.lower()} {state} "
                f"with the spec of generation {status.observed_generation}; create a new "
                f"{kind} to use the new spec"
            )
            cond = Condition(
                type="SpecApplied",
                status="False",
                reason=reason,
                message=notice,
                last_transition_time=_now(),
            )
            _with_condition(status, cond)
            status.message = notice
        try:
            context.store.update_status(obj.model_copy(update={"status": status}))
        except Conflict:
            continue
        if notice is not None:
            context.events.post(obj, "Warning", "SpecChangeRefused", notice)
        context.services.reconciler.wake()
        return
    raise kopf.TemporaryError("the object kept changing; trying again", delay=1)


def _refuse_unreadable(context: OperatorContext, kind: str, name: str, namespace: str) -> None:
    """A spec edited into something the contract refuses: Failed if it has not started;
    otherwise say that its status stops following the job until the spec is valid again."""
    try:
        raw = context.store.get_raw(kind, name, namespace)
        context.store.parse(kind, raw)
        return  # gone, or readable again
    except NotFound:
        return
    except ValidationError as error:
        message = contract_message(error)
    status = raw.get("status") or {}
    if status.get("phase", Phase.PENDING.value) in (p.value for p in WAITING):
        _fail_raw(context, raw, message)
        return
    notice = (
        f"spec change refused, it breaks the contract: {message}; the {kind.lower()}'s job "
        "keeps its spec, but its status is not updated until the spec is valid again"
    )
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "SpecApplied"]
    conditions.append(
        {
            "type": "SpecApplied",
            "status": "False",
            "reason": "InvalidSpec",
            "message": notice,
            "lastTransitionTime": _now().isoformat(),
        }
    )
    context.store.patch_status(kind, name, namespace, {"conditions": conditions, "message": notice})
    context.events.post(raw, "Warning", "SpecChangeRefused", notice)


def finalize(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    """Deletion: wait for the reconciler's clean-up, or force it after a bounded wait."""
    context = _ctx(memo)
    kind = str(body["kind"])
    meta = body.get("metadata", {})
    name, namespace, uid = str(meta["name"]), str(meta["namespace"]), meta.get("uid")
    reconciler = context.services.reconciler
    if kind == "PretrainedModel":
        users = pretrained_users(context.store, name, namespace)
        if users:  # never forced while models start from it: it waits for them
            raise kopf.TemporaryError(
                f"PretrainedModel {namespace}/{name} is used by model(s) {', '.join(users)}: "
                "deletion waits until they finish",
                delay=context.finalize_delay,
            )
    deadline = time.monotonic() + context.finalize_delay
    while True:
        reconciler.wake()
        try:
            obj = context.store.get(kind, name, namespace)
        except NotFound:
            try:
                raw = context.store.get_raw(kind, name, namespace)
            except NotFound:
                return  # the reconciler cleaned up and let it go
            if raw.get("metadata", {}).get("uid") == uid:
                _release_unreadable(context, raw, retry)  # the reconciler cannot read it
            return
        if obj.metadata.uid != uid:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(WAIT_STEP_S)
    if retry + 1 < context.finalize_retries:
        raise kopf.TemporaryError(
            f"waiting for the Ray jobs of {kind} {namespace}/{name} to stop "
            f"({reconciler.last_error or 'in progress'})",
            delay=context.finalize_delay,
        )
    _force_release(context, obj)


def _release_unreadable(context: OperatorContext, raw: Mapping[str, Any], retry: int) -> None:
    """Delete an object whose spec breaks the contract: stop what it ran, clean its storage."""
    kind = str(raw["kind"])
    uid = str(raw["metadata"]["uid"])
    attempts = int((raw.get("status") or {}).get("attempt") or 0)
    backend = context.services.backend
    running: list[str] = []
    try:
        for attempt in range(1, attempts + 1):
            sid = submission_id(kind, uid, attempt)
            info = backend.info(sid)
            if info is not None and not info.terminal:
                backend.stop(sid)
                running.append(sid)
    except RayUnavailable as error:
        running, reason = [f"{kind.lower()} {uid}"], str(error)
    else:
        reason = "stopping"
    if running and retry + 1 < context.finalize_retries:
        raise kopf.TemporaryError(f"waiting for Ray to stop {', '.join(running)}", delay=1)
    context.services.objects.delete_prefix(PREFIXES[kind](uid))
    if running:
        context.events.post(
            raw,
            "Warning",
            "FinalizerForced",
            f"released without confirming that its Ray jobs stopped ({reason}): "
            f"{', '.join(running)}",
        )


def _force_release(context: OperatorContext, obj: Resource) -> None:
    """Out of patience: clean storage without Ray's word, say so, and let the object go."""
    services = context.services
    status: JobStatus | None = getattr(obj, "status", None)
    kind = obj.kind  # type: ignore[attr-defined]
    sids = [
        submission_id(kind, str(obj.metadata.uid), attempt)
        for attempt in range(1, (status.attempt if status else 0) + 1)
    ]
    try:
        services.objects.delete_prefix(prefix_of(obj))
    except Exception as error:  # noqa: BLE001 - say so, and still let the object go
        log.warning("could not delete the storage of %s: %s", obj.metadata.name, error)
    if isinstance(obj, Model):
        services.metrics.forget_model(metric_label(obj))
    elif isinstance(obj, Dataset):
        services.metrics.forget_dataset(metric_label(obj))
    services.metrics.reconcile_errors.inc()
    reason = services.reconciler.last_error or "the reconciler did not finish in time"
    jobs = ", ".join(sids) if sids else "none"
    context.events.post(
        obj,
        "Warning",
        "FinalizerForced",
        f"released after {context.finalize_retries} tries without confirming that its Ray "
        f"jobs stopped ({reason}); storage deleted; Ray jobs possibly left: {jobs}",
    )


# ---------------------------------------------------------------------------- registry


def build_registry(progress_interval: float) -> kopf.OperatorRegistry:
    """The handlers above on a registry of their own (one per operator instance)."""
    registry = kopf.OperatorRegistry()
    kopf.on.login(registry=registry)(login)
    for plural in PLURALS.values():
        resource = (GROUP, VERSION, plural)
        kopf.on.create(*resource, registry=registry)(admit)
        kopf.on.resume(*resource, registry=registry)(resume)
        kopf.on.delete(*resource, registry=registry)(finalize)
    for plural in JOB_PLURALS:
        resource = (GROUP, VERSION, plural)
        kopf.on.update(*resource, field="spec", registry=registry)(spec_changed)
        kopf.timer(*resource, interval=progress_interval, when=is_active, registry=registry)(
            heartbeat
        )
    return registry
