"""The job store in the cluster: Dataset, Model and PretrainedModel custom resources.

REST objects are CRs too, so `kubectl get models` and `GET /api/v1/models` show the same thing.
The semantics of base.Store map onto the API server's:
- `metadata.uid`, `creationTimestamp`, `generation` and `resourceVersion` are the server's;
- `update` and `update_status` are JSON merge patches that carry the `resourceVersion` they were
  computed from, so a stale write is refused by the server (409 -> Conflict); status goes
  through the status subresource, so a status write never touches the spec and vice versa;
- `list` passes labels as a `labelSelector` and pages with the server's `limit`/`continue`;
- `create` puts the `kdigits.io/finalizer` finalizer on the object, so that `mark_deleted` (a
  DELETE) only sets `deletionTimestamp`; `remove` takes the finalizer off and the server then
  drops the object. The kopf operator uses the same finalizer for objects made with kubectl.
- objects created through the store (REST, which runs the admission checks first) carry the
  annotation `kdigits.io/admitted`; the operator adds it to objects made with kubectl once they
  pass the same checks, and the reconciler starts only admitted objects (`is_admitted`);
- the history of transitions lives in `status.history` (the CRDs keep unknown status fields),
  written in the same patch as the status it describes; the first entry, "created", is the
  object's `creationTimestamp`.
An object whose spec the API server accepted but the contract (jobs.specs) rejects can only come
from kubectl, for cross-field rules a CRD schema cannot express; the operator marks it Failed
with the reason, and this store leaves it out of lists and answers NotFound for it.
"""

from __future__ import annotations

import builtins
import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from controller.store.base import (
    AlreadyExists,
    Conflict,
    NotFound,
    Page,
    R,
    Store,
    StoreError,
    Transition,
)
from jobs.specs import GROUP, KINDS, PLURALS, VERSION, JobStatus, Resource

log = logging.getLogger(__name__)

FINALIZER = "kdigits.io/finalizer"
ADMITTED_ANNOTATION = "kdigits.io/admitted"
HISTORY_FIELD = "history"
HISTORY_LIMIT = 100
CONFLICT_RETRIES = 5

TransitionHook = Callable[[Resource, str | None, Transition], None]
"""Called after a recorded transition with the object, the previous phase and the transition."""


def is_admitted(obj: Resource) -> bool:
    """Whether the admission checks passed (REST before creating it, or the operator)."""
    return obj.metadata.annotations.get(ADMITTED_ANNOTATION) == "true"


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`; {} when they are equal."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = merge_patch(before, value)
            if inner:
                patch[key] = inner
        elif key not in old or before != value:
            patch[key] = value
    return patch


def _time(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class KubernetesStore(Store):
    """base.Store over the custom resources of one cluster (all namespaces)."""

    def __init__(self, api_client: ApiClient, on_transition: TransitionHook | None = None) -> None:
        self.api_client = api_client
        self.api = CustomObjectsApi(api_client)
        self.on_transition = on_transition
        self._invalid: set[str] = set()

    # ------------------------------------------------------------------ plumbing

    @staticmethod
    def _plural(kind: str) -> str:
        try:
            return PLURALS[kind]
        except KeyError:
            raise StoreError(f"unknown kind {kind!r}") from None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = getattr(self.api, method)(*args, _preload_content=False, **kwargs)
        data: dict[str, Any] = json.loads(response.data or b"{}")
        return data

    def _raw(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        try:
            return self._call(
                "get_namespaced_custom_object", GROUP, VERSION, namespace, self._plural(kind), name
            )
        except ApiException as error:
            if error.status == 404:
                raise NotFound(kind, namespace, name) from None
            raise

    def parse(self, kind: str, raw: Mapping[str, Any]) -> Resource:
        """The contract's object for a CR; ValidationError when its spec breaks the contract."""
        body = {key: raw[key] for key in ("metadata", "spec", "status") if key in raw}
        return KINDS[kind].model_validate(body)

    def _parse_or_skip(self, kind: str, raw: Mapping[str, Any]) -> Resource | None:
        try:
            return self.parse(kind, raw)
        except ValidationError as error:
            uid = str(raw.get("metadata", {}).get("uid"))
            if uid not in self._invalid:
                self._invalid.add(uid)
                meta = raw.get("metadata", {})
                log.warning(
                    "%s %s/%s breaks the contract and is skipped: %s",
                    kind,
                    meta.get("namespace"),
                    meta.get("name"),
                    error,
                )
            return None

    def _parsed(self, kind: str, raw: Mapping[str, Any]) -> Resource:
        obj = self._parse_or_skip(kind, raw)
        if obj is None:
            meta = raw.get("metadata", {})
            raise NotFound(kind, str(meta.get("namespace")), str(meta.get("name")))
        return obj

    @staticmethod
    def _check_identity(obj: Resource, raw: Mapping[str, Any]) -> str:
        """The resourceVersion to write against: the caller's, after checking it still holds."""
        meta = obj.metadata
        stored = raw.get("metadata", {})
        kind = obj.kind  # type: ignore[attr-defined]
        if meta.uid is not None and meta.uid != stored.get("uid"):
            raise Conflict(f'{kind} "{meta.name}" was deleted and re-created')
        rv = str(stored.get("resourceVersion"))
        if meta.resource_version is not None and meta.resource_version != rv:
            raise Conflict(
                f'{kind} "{meta.name}" was modified (resourceVersion {meta.resource_version} '
                f"is stale, now {rv}); read it again"
            )
        return rv

    def _patch(
        self, kind: str, name: str, namespace: str, body: dict[str, Any], status: bool = False
    ) -> dict[str, Any]:
        method = "patch_namespaced_custom_object" + ("_status" if status else "")
        try:
            return self._call(method, GROUP, VERSION, namespace, self._plural(kind), name, body)
        except ApiException as error:
            if error.status == 404:
                raise NotFound(kind, namespace, name) from None
            if error.status == 409:
                raise Conflict(f'{kind} "{name}" was modified meanwhile; read it again') from None
            raise

    # ------------------------------------------------------------------ interface

    def create(self, obj: R) -> R:
        kind: str = obj.kind  # type: ignore[attr-defined]
        meta = obj.metadata
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": {
                "name": meta.name,
                "namespace": meta.namespace,
                "labels": dict(meta.labels),
                "annotations": {**meta.annotations, ADMITTED_ANNOTATION: "true"},
                "finalizers": [FINALIZER],
            },
            "spec": obj.spec.to_json_dict(),  # type: ignore[attr-defined]
        }
        try:
            raw = self._call(
                "create_namespaced_custom_object",
                GROUP,
                VERSION,
                meta.namespace,
                self._plural(kind),
                body,
            )
        except ApiException as error:
            if error.status == 409:
                raise AlreadyExists(kind, meta.namespace, meta.name) from None
            raise
        return self._parsed(kind, raw)  # type: ignore[return-value]

    def get(self, kind: str, name: str, namespace: str = "default") -> Resource:
        return self._parsed(kind, self._raw(kind, name, namespace))

    def get_raw(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        """The CR as the API server has it (also when its spec breaks the contract)."""
        return self._raw(kind, name, namespace)

    def _list_raw(
        self,
        kind: str,
        namespace: str | None,
        labels: dict[str, str] | None,
        limit: int | None,
        continue_token: str | None,
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if labels:
            kwargs["label_selector"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        if limit is not None:
            kwargs["limit"] = limit
        if continue_token:
            kwargs["_continue"] = continue_token
        plural = self._plural(kind)
        try:
            if namespace is None:
                return self._call("list_cluster_custom_object", GROUP, VERSION, plural, **kwargs)
            return self._call(
                "list_namespaced_custom_object", GROUP, VERSION, namespace, plural, **kwargs
            )
        except ApiException as error:
            if continue_token and error.status in (400, 410):
                raise ValueError(f"invalid continue token (HTTP {error.status})") from None
            raise

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        labels: dict[str, str] | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Page:
        answer = self._list_raw(kind, namespace, labels, limit, continue_token)
        items = [obj for raw in answer.get("items", []) if (obj := self._parse_or_skip(kind, raw))]
        return Page(items, (answer.get("metadata") or {}).get("continue") or None)

    def update(self, obj: R) -> R:
        kind: str = obj.kind  # type: ignore[attr-defined]
        meta = obj.metadata
        raw = self._raw(kind, meta.name, meta.namespace)
        rv = self._check_identity(obj, raw)
        stored = raw.get("metadata", {})
        meta_patch: dict[str, Any] = {}
        for field, value in (("labels", meta.labels), ("annotations", meta.annotations)):
            if diff := merge_patch(stored.get(field) or {}, value):
                meta_patch[field] = diff
        stored_obj = self._parsed(kind, raw)
        spec: dict[str, Any] = {}
        if obj.spec != stored_obj.spec:  # type: ignore[attr-defined]  # semantic, not textual
            spec = merge_patch(raw.get("spec") or {}, obj.spec.to_json_dict())  # type: ignore[attr-defined]
        if not meta_patch and not spec:
            return self._parsed(kind, raw)  # type: ignore[return-value]
        patch: dict[str, Any] = {"metadata": {**meta_patch, "resourceVersion": rv}}
        if spec:
            patch["spec"] = spec
        return self._parsed(kind, self._patch(kind, meta.name, meta.namespace, patch))  # type: ignore[return-value]

    def update_status(self, obj: R) -> R:
        kind: str = obj.kind  # type: ignore[attr-defined]
        meta = obj.metadata
        raw = self._raw(kind, meta.name, meta.namespace)
        rv = self._check_identity(obj, raw)
        status_cls: type[JobStatus] = type(obj.status)  # type: ignore[attr-defined]
        stored_status: dict[str, Any] = dict(raw.get("status") or {})
        old = status_cls.model_validate(stored_status)
        new: JobStatus = obj.status  # type: ignore[attr-defined]
        patch = merge_patch(_dump(old), _dump(new))
        transition: Transition | None = None
        if (old.phase, old.attempt) != (new.phase, new.attempt):
            transition = Transition(
                time=datetime.now(UTC),
                phase=new.phase.value,
                attempt=new.attempt,
                message=new.message,
            )
            history = list(stored_status.get(HISTORY_FIELD) or [])
            history.append(_transition_json(transition))
            patch[HISTORY_FIELD] = history[-HISTORY_LIMIT:]
        if not patch:
            return self._parsed(kind, raw)  # type: ignore[return-value]
        body = {"metadata": {"resourceVersion": rv}, "status": patch}
        saved = self._parsed(kind, self._patch(kind, meta.name, meta.namespace, body, status=True))
        if transition is not None and self.on_transition is not None:
            try:
                self.on_transition(saved, old.phase.value, transition)
            except Exception:  # noqa: BLE001 - reporting a transition never fails the write
                log.exception("reporting the transition of %s failed", meta.name)
        return saved  # type: ignore[return-value]

    def patch_status(
        self, kind: str, name: str, namespace: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the raw status (for objects the contract cannot read)."""
        return self._patch(kind, name, namespace, {"status": status}, status=True)

    def mark_deleted(self, kind: str, name: str, namespace: str = "default") -> Resource:
        raw = self._raw(kind, name, namespace)
        obj = self._parsed(kind, raw)
        if obj.metadata.deletion_timestamp is not None:
            return obj
        body = {"preconditions": {"uid": obj.metadata.uid}, "propagationPolicy": "Background"}
        try:
            self._call(
                "delete_namespaced_custom_object",
                GROUP,
                VERSION,
                namespace,
                self._plural(kind),
                name,
                body=body,
            )
        except ApiException as error:
            if error.status == 404:
                raise NotFound(kind, namespace, name) from None
            if error.status == 409:
                raise Conflict(f'{kind} "{name}" was deleted and re-created') from None
            raise
        try:
            return self.get(kind, name, namespace)
        except NotFound:  # no finalizer on it: the server dropped it at once
            obj.metadata.deletion_timestamp = datetime.now(UTC)
            return obj

    def remove(self, kind: str, name: str, namespace: str, uid: str) -> None:
        for _ in range(CONFLICT_RETRIES):
            try:
                raw = self._raw(kind, name, namespace)
            except NotFound:
                return
            meta = raw.get("metadata", {})
            finalizers = list(meta.get("finalizers") or [])
            if meta.get("uid") != uid or FINALIZER not in finalizers:
                return
            finalizers.remove(FINALIZER)
            body = {
                "metadata": {
                    "resourceVersion": meta.get("resourceVersion"),
                    "finalizers": finalizers,
                }
            }
            try:
                self._patch(kind, name, namespace, body)
                return
            except NotFound:
                return
            except Conflict:
                continue
        raise Conflict(f'{kind} "{name}" kept changing while its finalizer was removed')

    def history(
        self, kind: str, name: str, namespace: str = "default"
    ) -> builtins.list[Transition]:
        raw = self._raw(kind, name, namespace)
        created = Transition(
            time=_time(raw.get("metadata", {}).get("creationTimestamp")),
            phase="Pending",
            message="created",
        )
        entries = (raw.get("status") or {}).get(HISTORY_FIELD) or []
        return [created] + [_transition_from(e) for e in entries if isinstance(e, dict)]

    def count_by_phase(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for kind in KINDS:
            token: str | None = None
            while True:
                answer = self._list_raw(kind, None, None, 500, token)
                for raw in answer.get("items", []):
                    phase = str((raw.get("status") or {}).get("phase") or "Pending")
                    counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
                token = (answer.get("metadata") or {}).get("continue") or None
                if token is None:
                    break
        return counts

    def close(self) -> None:
        self.api_client.close()


def _dump(status: JobStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def _transition_json(transition: Transition) -> dict[str, Any]:
    return {
        "time": _iso(transition.time),
        "phase": transition.phase,
        "attempt": transition.attempt,
        "message": transition.message,
    }


def _transition_from(entry: Mapping[str, Any]) -> Transition:
    return Transition(
        time=_time(entry.get("time")),
        phase=str(entry.get("phase", "")),
        attempt=int(entry.get("attempt") or 0),
        message=str(entry.get("message") or ""),
    )
