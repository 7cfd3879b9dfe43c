"""What the dataset and model routers share: create, paging, logs, abort, history, delete."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from fastapi.responses import PlainTextResponse, StreamingResponse

from controller.api.errors import ApiError
from controller.api.schemas import CreateBody, ListMeta, TransitionOut
from controller.reconciler import ABORT_ANNOTATION, Reconciler
from controller.store import Page, Store
from jobs.specs import JobStatus, Phase, Resource

GROUP_LABEL = "kdigits.io/group"
FOLLOW_POLL_S = 0.5
DELETE_WAIT_S = 5.0


def body_namespace(body: CreateBody, namespace: str | None) -> str:
    """The query's namespace, or the body's; both given must agree."""
    in_body = "namespace" in body.metadata.model_fields_set
    if namespace and in_body and body.metadata.namespace != namespace:
        raise ApiError(
            422,
            f'"{body.metadata.namespace}" does not match ?namespace={namespace}',
            "metadata.namespace",
        )
    return namespace or body.metadata.namespace


def new_object(cls: type[Resource], body: CreateBody, namespace: str) -> Resource:
    meta = body.metadata.model_copy(
        update={
            "namespace": namespace,
            "uid": None,
            "generation": None,
            "resource_version": None,
            "creation_timestamp": None,
            "deletion_timestamp": None,
        }
    )
    return cls(metadata=meta, spec=body.spec)  # type: ignore[attr-defined]


def list_page(
    store: Store,
    kind: str,
    namespace: str | None,
    group: str | None,
    limit: int | None,
    token: str | None,
    visible: Callable[[str], bool] | None = None,
) -> tuple[list[Resource], ListMeta]:
    labels = {GROUP_LABEL: group} if group else None
    try:
        page: Page = store.list(kind, namespace, labels, limit, token)
    except ValueError as error:
        raise ApiError(422, str(error), "continue") from None
    items = page.items
    if visible is not None:  # across namespaces in cluster mode: only those the user may list
        items = [obj for obj in items if visible(obj.metadata.namespace)]
    return items, ListMeta(**{"continue": page.continue_token})


def abort(store: Store, reconciler: Reconciler, obj: Resource) -> Resource:
    status: JobStatus = obj.status  # type: ignore[attr-defined]
    if status.phase.terminal:
        raise ApiError(409, f'{obj.kind} "{obj.metadata.name}" already {status.phase.value}')  # type: ignore[attr-defined]
    if obj.metadata.deletion_timestamp is not None:
        raise ApiError(409, f'{obj.kind} "{obj.metadata.name}" is being deleted')  # type: ignore[attr-defined]
    annotations = dict(obj.metadata.annotations)
    annotations.setdefault(ABORT_ANNOTATION, datetime.now(UTC).isoformat())
    updated = obj.model_copy(deep=True)
    updated.metadata.annotations = annotations
    updated = store.update(updated)
    reconciler.wake()
    return updated


def delete(store: Store, reconciler: Reconciler, obj: Resource) -> Resource:
    """Request deletion and give the reconciler a moment to clean up."""
    meta = obj.metadata
    kind: str = obj.kind  # type: ignore[attr-defined]
    marked = store.mark_deleted(kind, meta.name, meta.namespace)
    reconciler.wake()
    deadline = time.monotonic() + DELETE_WAIT_S
    while time.monotonic() < deadline:
        try:
            current = store.get(kind, meta.name, meta.namespace)
        except Exception:  # noqa: BLE001 - NotFound: gone, done
            return marked
        if current.metadata.uid != meta.uid:
            return marked
        time.sleep(0.1)
        reconciler.wake()
    return marked


def history(store: Store, kind: str, name: str, namespace: str) -> list[TransitionOut]:
    return [
        TransitionOut(time=t.time.isoformat(), phase=t.phase, attempt=t.attempt, message=t.message)
        for t in store.history(kind, name, namespace)
    ]


def logs_response(
    store: Store,
    reconciler: Reconciler,
    obj: Resource,
    follow: bool,
    attempt: int | None,
) -> PlainTextResponse | StreamingResponse:
    if not follow:
        return PlainTextResponse(reconciler.job_log(obj, attempt))
    return StreamingResponse(
        _follow(store, reconciler, obj, attempt), media_type="text/plain; charset=utf-8"
    )


def _follow(
    store: Store, reconciler: Reconciler, obj: Resource, attempt: int | None
) -> Iterator[str]:
    """Stream the log as it grows, across retries, until the job is finished."""
    kind: str = obj.kind  # type: ignore[attr-defined]
    meta = obj.metadata
    current_attempt, offset = None, 0
    while True:
        try:
            obj = store.get(kind, meta.name, meta.namespace)
        except Exception:  # noqa: BLE001 - deleted while following
            return
        status: JobStatus = obj.status  # type: ignore[attr-defined]
        wanted = attempt or status.attempt
        if wanted != current_attempt:
            current_attempt, offset = wanted, 0
        text = reconciler.job_log(obj, wanted) if wanted else ""
        if len(text) > offset:
            yield text[offset:]
            offset = len(text)
        finished = status.phase.terminal or (attempt is not None and attempt < status.attempt)
        if finished and status.phase != Phase.RUNNING:
            text = reconciler.job_log(obj, wanted) if wanted else ""
            if len(text) > offset:
                yield text[offset:]
            return
        time.sleep(FOLLOW_POLL_S)
