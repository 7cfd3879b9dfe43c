"""What the dataset, model and pretrained-model routers share.

Every kind reads one object, lists a page of them and deletes one the same way, the two job
kinds (Dataset, Model) are also created, aborted, logged and traced the same way. So that one
piece of code serves them all, `ResourceRoutes` registers those routes on each kind's own router
under the names, paths, status codes and response models the hand-written routes had (the
OpenAPI document is unchanged), and the kind's module keeps only what is its own: the admission
check on create, what refuses a delete (an object still in use), and its sub-resources. The
plain functions below are the bodies, also used by the routes that are not shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel

from controller.api.deps import (
    AuthDep,
    ContinueDep,
    GroupDep,
    LimitDep,
    ListScopeDep,
    NamespaceDep,
    ReconcilerDep,
    SettingsDep,
    StoreDep,
)
from controller.api.errors import AUTH_RESPONSES, ERROR_RESPONSES, ApiError
from controller.api.schemas import CreateBody, ListMeta, TransitionOut
from controller.reconciler import ABORT_ANNOTATION, Reconciler
from controller.settings import Settings
from controller.store import Page, Store
from jobs.specs import DNS1123_LABEL, JobStatus, Phase, Resource, ResourceName

GROUP_LABEL = "kdigits.io/group"
FOLLOW_POLL_S = 0.5
DELETE_WAIT_S = 5.0

ROUTER_OPTIONS: dict[str, Any] = {
    "dependencies": [AuthDep],
    "responses": {**AUTH_RESPONSES, **ERROR_RESPONSES},
}
"""What each kind's `APIRouter(prefix=..., tags=[...], **ROUTER_OPTIONS)` adds: the token
check, and the 400/401/404/409 error bodies in the OpenAPI document."""

LOG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "The log"}
}

R = TypeVar("R", bound=Resource)
B = TypeVar("B", bound=CreateBody)


def kind_of(cls: type[Resource]) -> str:
    """The `kind` a resource class carries ("Dataset", "Model", "PretrainedModel")."""
    return str(cls.model_fields["kind"].default)


def get(store: Store, cls: type[R], name: str, namespace: str) -> R:
    """One object as its own class (a missing one is the store's NotFound: 404)."""
    obj = store.get(kind_of(cls), name, namespace)
    assert isinstance(obj, cls)
    return obj


def conflict_unless_unused(what: str, users: list[str], wait: str) -> None:
    """409 naming the models that still use an object (`what`: e.g. 'dataset "d"')."""
    if users:
        raise ApiError(409, f"{what} is used by model(s) {', '.join(sorted(users))}: {wait}")


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


class ResourceRoutes(Generic[R]):
    """The routes every kind has alike, registered on the kind's own router one at a time (so
    the module decides their order, which is the OpenAPI document's order).

    Each method adds one route named as the hand-written ones were (`create_<singular>`,
    `read_<plural>`, `read_<singular>`, `delete_<singular>`, `read_<singular>_logs`,
    `abort_<singular>`, `read_<singular>_history`: the names make the operation ids and
    summaries) and returns its endpoint, which the module keeps under that name.
    """

    def __init__(
        self,
        router: APIRouter,
        cls: type[R],
        list_cls: type[BaseModel],
        singular: str,
        plural: str,
    ) -> None:
        self.router, self.cls, self.list_cls = router, cls, list_cls
        self.singular, self.plural = singular, plural

    def _add(
        self, method: str, path: str, name: str, endpoint: Callable[..., Any], **route: Any
    ) -> Callable[..., Any]:
        endpoint.__name__ = endpoint.__qualname__ = name
        self.router.add_api_route(path, endpoint, methods=[method], name=name, **route)
        return endpoint

    def create(
        self, body_cls: type[B], admit: Callable[[B, str, Settings, Store], None]
    ) -> Callable[..., Any]:
        """POST "" (201): `?namespace=` or the body's, `admit(body, namespace, ...)` (422s)."""
        cls = self.cls

        def endpoint(
            body: CreateBody,
            store: StoreDep,
            settings: SettingsDep,
            reconciler: ReconcilerDep,
            namespace: Annotated[str | None, Query(pattern=DNS1123_LABEL)] = None,
        ) -> Any:
            ns = body_namespace(body, namespace)
            admit(cast(B, body), ns, settings, store)
            obj = store.create(new_object(cls, body, ns))
            reconciler.wake()
            return obj

        endpoint.__annotations__["body"] = body_cls  # the kind's own body, for its schema
        return self._add(
            "POST", "", f"create_{self.singular}", endpoint,
            response_model=cls, status_code=201, response_model_exclude_none=True,
        )  # fmt: skip

    def list(self) -> Callable[..., Any]:
        """GET "": one page, `?group=`, `?limit=`, `?continue=`, `?allNamespaces=`."""
        kind, list_cls = kind_of(self.cls), self.list_cls

        def endpoint(
            store: StoreDep,
            scope: ListScopeDep,
            group: GroupDep = None,
            limit: LimitDep = None,
            continue_: ContinueDep = None,
        ) -> Any:
            items, meta = list_page(
                store, kind, scope.namespace, group, limit, continue_, scope.visible
            )
            return list_cls(items=items, metadata=meta)

        return self._add(
            "GET", "", f"read_{self.plural}", endpoint,
            response_model=list_cls, response_model_exclude_none=True,
        )  # fmt: skip

    def _on_object(
        self,
        method: str,
        path: str,
        route_name: str,
        act: Callable[[Store, Reconciler, R], Any],
        **route: Any,
    ) -> Callable[..., Any]:
        """A route on `/{name}...` that finds the object (404) and hands it to `act`."""
        cls = self.cls

        def endpoint(
            store: StoreDep,
            reconciler: ReconcilerDep,
            name: ResourceName,
            namespace: NamespaceDep = "default",
        ) -> Any:
            return act(store, reconciler, get(store, cls, name, namespace))

        return self._add(method, path, route_name, endpoint, **route)

    def read(self) -> Callable[..., Any]:
        """GET /{name}."""
        return self._on_object(
            "GET", "/{name}", f"read_{self.singular}", lambda _store, _reconciler, obj: obj,
            response_model=self.cls, response_model_exclude_none=True,
        )  # fmt: skip

    def delete(self, refuse: Callable[[Store, R], None] | None = None) -> Callable[..., Any]:
        """DELETE /{name}; `refuse(store, obj)` may raise a 409 first (the object is in use)."""

        def act(store: Store, reconciler: Reconciler, obj: R) -> Resource:
            if refuse is not None:
                refuse(store, obj)
            return delete(store, reconciler, obj)

        return self._on_object(
            "DELETE", "/{name}", f"delete_{self.singular}", act,
            response_model=self.cls, response_model_exclude_none=True,
        )  # fmt: skip

    def abort(self) -> Callable[..., Any]:
        """POST /{name}/abort."""
        return self._on_object(
            "POST", "/{name}/abort", f"abort_{self.singular}", abort,
            response_model=self.cls, response_model_exclude_none=True,
        )  # fmt: skip

    def logs(self) -> Callable[..., Any]:
        """GET /{name}/logs: the job log as text, `?follow=true` streams it."""
        cls = self.cls

        def endpoint(
            store: StoreDep,
            reconciler: ReconcilerDep,
            name: ResourceName,
            namespace: NamespaceDep = "default",
            follow: Annotated[bool, Query(description="Stream until the job ends")] = False,
            attempt: Annotated[
                int | None, Query(ge=1, le=100, description="Default: latest")
            ] = None,
        ) -> Response:
            obj = get(store, cls, name, namespace)
            return logs_response(store, reconciler, obj, follow, attempt)

        return self._add(
            "GET", "/{name}/logs", f"read_{self.singular}_logs", endpoint,
            response_model=None, responses=LOG_RESPONSES,
        )  # fmt: skip

    def history(self) -> Callable[..., Any]:
        """GET /{name}/history: the phase transitions."""
        kind = kind_of(self.cls)

        def endpoint(
            store: StoreDep, name: ResourceName, namespace: NamespaceDep = "default"
        ) -> Any:
            return history(store, kind, name, namespace)

        return self._add(
            "GET", "/{name}/history", f"read_{self.singular}_history", endpoint,
            response_model=list[TransitionOut],
        )  # fmt: skip
