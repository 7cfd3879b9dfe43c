"""A Kubernetes API server for tests: kmock's KubernetesEmulator over real HTTP, plus the few
API-server semantics kdigits relies on that the emulator leaves out.

kmock stores objects and merges patches, serves lists and watch streams, and keeps objects with
finalizers until the finalizers go. A real API server also sets `uid`, `creationTimestamp`,
`generation` (bumped on spec changes) and `resourceVersion` (bumped on every write), refuses a
write carrying a stale `resourceVersion` (409) or a failed JSON-patch `test` (422), keeps status
writes apart from spec writes (the status subresource), and filters and pages lists
(`labelSelector`, `limit`, `continue`), and starts a watch at the `resourceVersion` of the
list it follows instead of replaying every object. `ApiServer` adds exactly that, subclassing
the emulator as kmock's documentation suggests, and leaves TokenReview and SubjectAccessReview
to reactions the tests register with kmock's own routing (`api[...] << handler`).

`RunningApiServer` runs it in a thread with its own event loop, so that synchronous clients (the
`kubernetes` package) and kopf (in its own thread) talk to it over HTTP like to a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, dicts, enums, rendering

from jobs.specs import GROUP, PLURALS, VERSION

REVIEW_PLURALS = frozenset({"tokenreviews", "subjectaccessreviews"})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={})


def _with_data(request: rendering.Request, data: Any) -> rendering.Request:
    """The same request (kmock matches requests by identity) with the body the store applies."""
    object.__setattr__(request, "data", data)  # noqa: PLC2801 - a frozen attrs instance
    return request


def _matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-joined."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator with server-set metadata, optimistic concurrency, status and paging."""

    _version: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind, plural in PLURALS.items():
            self.resources[f"{GROUP}/{VERSION}/{plural}"] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=True,
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                subresources={"status"},
            )
        self.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
            kind="CustomResourceDefinition",
            singular="customresourcedefinition",
            verbs={"get", "list", "watch"},
            namespaced=False,
        )
        self.resources["v1/namespaces"] = kmock.ResourceInfo(
            kind="Namespace", singular="namespace", verbs={"get", "list", "watch"}, namespaced=False
        )
        self.resources["v1/events"] = kmock.ResourceInfo(
            kind="Event", singular="event", verbs={"create", "get", "list"}, namespaced=True
        )

    # ------------------------------------------------------------------ helpers

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _has_status(self, resource: kmock.resource) -> bool:
        info = self.resources.get(resource) if resource in self.resources else None
        return isinstance(info, kmock.ResourceInfo) and "status" in info.subresources

    def _stored(self, key: Any) -> dict[str, Any] | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    # ------------------------------------------------------------------ requests

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        resource = request.resource
        if resource is not None and resource.plural in REVIEW_PLURALS:
            # Reviews are answers, not objects: only the tests' reactions serve them.
            return await apps.RawHandler._handle(self, request)
        if resource is not None and request.action == enums.action.CREATE:
            request = self._on_create(request)
        elif resource is not None and request.action == enums.action.UPDATE and request.name:
            request = self._on_update(request)
        elif resource is not None and request.action == enums.action.DELETE and request.name:
            self._on_delete(request)
        return await super()._handle(request)

    def _on_create(self, request: rendering.Request) -> rendering.Request:
        assert request.resource is not None
        data = copy.deepcopy(request.data or {})
        meta = data.setdefault("metadata", {})
        namespace = request.namespace or meta.get("namespace")
        if namespace:
            meta["namespace"] = namespace
        if not meta.get("name"):
            raise _error(422, "Invalid", "metadata.name: Required value")
        if self._stored((request.resource, namespace, meta["name"])) is not None:
            return request  # kmock answers 409 AlreadyExists
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            resourceVersion=self._next_version(),
        )
        if self._has_status(request.resource):
            data.pop("status", None)  # the status subresource ignores status on create
            meta["generation"] = 1
        return _with_data(request, data)

    def _on_update(self, request: rendering.Request) -> rendering.Request:
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        current = self._stored(key)
        if current is None:
            return request  # kmock answers 404
        patch = request.data
        if isinstance(patch, dict):
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            have = current["metadata"].get("resourceVersion")
            if wanted is not None and wanted != have:
                raise _error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}":'
                    " the object has been modified; please apply your changes to the latest"
                    " version and try again",
                )
        try:
            patched = dict(dicts.patch_dict(copy.deepcopy(current), patch or {}))
        except jsonpatch.JsonPatchTestFailed as error:
            raise _error(422, "Invalid", f"the patch test failed: {error}") from None
        except (jsonpatch.JsonPatchException, ValueError) as error:
            raise _error(422, "Invalid", f"the patch does not apply: {error}") from None
        if self._has_status(request.resource):
            if request.subresource == "status":
                new = {**current, "status": patched.get("status")}
                if new["status"] is None:
                    new.pop("status")
            else:
                new = {**patched}
                new.pop("status", None)
                if "status" in current:
                    new["status"] = current["status"]
        else:
            new = patched
        meta = new["metadata"] = {**new.get("metadata", {})}
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation"):
            if field in current["metadata"]:
                meta[field] = current["metadata"][field]
        meta["resourceVersion"] = current["metadata"].get("resourceVersion")
        if new == current:
            return _with_data(request, {})  # a no-op write changes nothing
        if new.get("spec") != current.get("spec") and "generation" in meta:
            meta["generation"] = int(meta["generation"]) + 1
        meta["resourceVersion"] = self._next_version()
        return _with_data(request, [{"op": "replace", "path": "", "value": new}])

    def _on_delete(self, request: rendering.Request) -> None:
        assert request.resource is not None
        key: Any = (request.resource, request.namespace, request.name)
        current = self._stored(key)
        if current is None:
            return  # kmock answers 404
        wanted = ((request.data or {}).get("preconditions") or {}).get("uid")
        if wanted and wanted != current["metadata"].get("uid"):
            raise _error(409, "Conflict", "Precondition failed: the UID does not match")
        meta = current["metadata"]
        if meta.get("finalizers") and not meta.get("deletionTimestamp"):
            self.objects[key].patch({"metadata": {"resourceVersion": self._next_version()}})

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """A watch from a list's resourceVersion sends only what changed since (kmock: all)."""
        since = request.params.get("resourceVersion", "")
        yield b""
        async with self._lock:
            current = [
                obj.raw
                for (resource, namespace, name), obj in self.objects.items()
                if not obj.deleted and self._watched(request, resource, namespace, name)
            ]
        for raw in current:
            version = raw.get("metadata", {}).get("resourceVersion", "0")
            if not since.isdigit():
                yield {"type": "ADDED", "object": raw}
            elif int(version) > int(since):
                yield {"type": "MODIFIED", "object": raw}
        assert request.resource is not None
        async for event in self._buses[request.resource]:
            meta = event.get("object", {}).get("metadata", {})
            if self._watched(request, request.resource, meta.get("namespace"), meta.get("name")):
                yield event

    @staticmethod
    def _watched(
        request: rendering.Request, resource: Any, namespace: str | None, name: str | None
    ) -> bool:
        return (
            resource == request.resource
            and (request.namespace is None or namespace == request.namespace)
            and (request.name is None or name == request.name)
        )

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        payload: Any = await super()._serve_list(request)
        items: list[dict[str, Any]] = sorted(
            payload["items"],
            key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]),
        )
        selector = request.params.get("labelSelector")
        if selector:
            items = [i for i in items if _matches(i["metadata"].get("labels") or {}, selector)]
        token = request.params.get("continue")
        if token:
            try:
                after = tuple(json.loads(base64.urlsafe_b64decode(token.encode())))
            except ValueError:
                raise _error(400, "BadRequest", "continue key is not valid") from None
            items = [
                i
                for i in items
                if (i["metadata"].get("namespace") or "", i["metadata"]["name"]) > after
            ]
        list_meta: dict[str, Any] = {"resourceVersion": str(self._version)}
        limit = int(request.params.get("limit") or 0)
        if limit and len(items) > limit:
            items = items[:limit]
            last = items[-1]["metadata"]
            mark = [last.get("namespace") or "", last["name"]]
            list_meta["continue"] = base64.urlsafe_b64encode(json.dumps(mark).encode()).decode()
        kind = (request.resource.plural if request.resource else "") or ""
        return {"apiVersion": "v1", "kind": f"{kind}List", "metadata": list_meta, "items": items}


class RunningApiServer:
    """An `ApiServer` on a loopback port, served from a thread with its own event loop."""

    def __init__(self) -> None:
        self.api = ApiServer()
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-apiserver", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.api, kmock.Server(self.api) as server:
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    def start(self) -> RunningApiServer:
        self._thread.start()
        if not self._started.wait(30):
            raise TimeoutError("the kmock API server did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, fn: Any) -> Any:
        """Run a plain function on the server's loop (to read or seed its state safely)."""
        return asyncio.run_coroutine_threadsafe(_call(fn), self._loop).result(30)


async def _call(fn: Any) -> Any:
    return fn()


@contextmanager
def running_apiserver() -> Iterator[RunningApiServer]:
    server = RunningApiServer().start()
    try:
        yield server
    finally:
        server.stop()
