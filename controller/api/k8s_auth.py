"""REST in the cluster: Kubernetes authenticates and authorises every API request.

A request's bearer token is checked with a TokenReview; the user it names is then authorised
with a SubjectAccessReview for the verb the request amounts to on the custom resource it touches,
in its namespace (group `kdigits.io`):

    GET    /api/v1/<plural>                list        GET  /api/v1/<plural>/<name>[/...]  get
    POST   /api/v1/<plural>                create      DELETE /api/v1/<plural>/<name>     delete
    POST   /api/v1/models/<name>/abort     update      POST /api/v1/models/<name>/clone   create
    POST   /api/v1/models/<name>/pretrained  create on pretrainedmodels
    POST   /api/v1/models/<name>/<anything else>       get (classify, classify-many, top-n)

so REST and kubectl share one RBAC (the chart's kdigits-view and kdigits-edit roles); the
chart's optional static token (KDIGITS_TOKEN, for the CLI) is accepted as is, unrestricted.
A listing with `allNamespaces=true` is allowed for everyone who authenticates, and shows the
namespaces the user may `list` in: all of them when a cluster-wide review allows it, otherwise
those that a per-namespace review allows. Answers are cached for a few seconds per token and per
question, so a page of requests costs a handful of reviews. No token, or one the TokenReview
does not authenticate: 401. Not allowed: 403 naming the user, verb, resource and namespace.
/healthz, /readyz and /metrics do not depend on this (they stay open for probes and Prometheus).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from kubernetes.client import ApiClient
from starlette.concurrency import run_in_threadpool

from controller.api.errors import ApiError
from controller.operator.kube import post_json
from jobs.specs import GROUP

CACHE_TTL_S = 10.0
COLLECTIONS = {
    "datasets": "datasets",
    "models": "models",
    "pretrained-models": "pretrainedmodels",
}
SUB_VERBS = {"abort": "update", "clone": "create"}
STATIC_USER = "kdigits:static-token"  # noqa: S105 - a user name, not a secret


@dataclass(frozen=True)
class User:
    """Who a TokenReview says the token belongs to."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Target:
    """What a request does, as a SubjectAccessReview asks it."""

    verb: str
    resource: str
    namespace: str
    name: str | None = None
    all_namespaces: bool = False


@dataclass
class _Cache:
    ttl: float
    entries: dict[Any, tuple[float, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        value = compute()
        with self.lock:
            if len(self.entries) > 10_000:
                self.entries.clear()
            self.entries[key] = (now + self.ttl, value)
        return value


class AccessReviewer:
    """TokenReview and SubjectAccessReview through the controller's own API client."""

    def __init__(self, api_client: ApiClient, ttl: float = CACHE_TTL_S) -> None:
        self.api_client = api_client
        self._tokens = _Cache(ttl)
        self._decisions = _Cache(ttl)

    def authenticate(self, token: str) -> User | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        user: User | None = self._tokens.get(key, lambda: self._review_token(token))
        return user

    def _review_token(self, token: str) -> User | None:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        answer = post_json(self.api_client, "/apis/authentication.k8s.io/v1/tokenreviews", body)
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        if not user.get("username"):
            return None
        extra = tuple(sorted((k, tuple(v)) for k, v in (user.get("extra") or {}).items()))
        return User(
            username=str(user["username"]),
            uid=str(user.get("uid") or ""),
            groups=tuple(user.get("groups") or ()),
            extra=extra,
        )

    def allowed(
        self, user: User, verb: str, resource: str, namespace: str, name: str | None = None
    ) -> bool:
        """May `user` do `verb` on `resource` (of kdigits.io) in `namespace` ("" = all)?"""
        key = (user, verb, resource, namespace, name)
        decide = lambda: self._review_access(user, verb, resource, namespace, name)  # noqa: E731
        return bool(self._decisions.get(key, decide))

    def _review_access(
        self, user: User, verb: str, resource: str, namespace: str, name: str | None
    ) -> bool:
        attributes: dict[str, Any] = {"group": GROUP, "resource": resource, "verb": verb}
        if namespace:
            attributes["namespace"] = namespace
        if name:
            attributes["name"] = name
        spec: dict[str, Any] = {
            "user": user.username,
            "groups": list(user.groups),
            "resourceAttributes": attributes,
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra}
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        status = post_json(self.api_client, path, body).get("status") or {}
        return bool(status.get("allowed")) and not status.get("denied")


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "a Kubernetes bearer token is required (Authorization: Bearer <token>)")
    return token.strip()


async def request_namespace(request: Request) -> str:
    """`?namespace=`, else the POST body's metadata.namespace, else default (as the routes do)."""
    namespace = request.query_params.get("namespace")
    if namespace:
        return namespace
    if request.method == "POST" and "json" in request.headers.get("content-type", ""):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None  # the route answers 400/422 for it
        meta = body.get("metadata") if isinstance(body, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("namespace"), str):
            return str(meta["namespace"])
    return "default"


def target_of(method: str, path: str, namespace: str, all_namespaces: bool) -> Target | None:
    """The SubjectAccessReview question for a request; None: authentication is enough."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or parts[:2] != ["api", "v1"] or parts[2] not in COLLECTIONS:
        return None
    resource = COLLECTIONS[parts[2]]
    if len(parts) == 3:
        verb = "list" if method == "GET" else "create"
        return Target(verb, resource, namespace, None, all_namespaces and verb == "list")
    name = parts[3]
    if len(parts) == 4:
        verb = {"GET": "get", "DELETE": "delete"}.get(method, "update")
        return Target(verb, resource, namespace, name)
    sub = parts[4]
    if method == "GET":
        return Target("get", resource, namespace, name)
    if sub == "pretrained":
        return Target("create", "pretrainedmodels", namespace)
    if sub in SUB_VERBS:
        verb = SUB_VERBS[sub]
        return Target(verb, resource, namespace, None if verb == "create" else name)
    return Target("get", resource, namespace, name)


async def authorize(
    request: Request, reviewer: AccessReviewer, authorization: str | None, static_token: str = ""
) -> None:
    """The API's dependency in cluster mode: 401 or 403, or the user in `request.state`."""
    token = bearer_token(authorization)
    if static_token and hmac.compare_digest(token, static_token):
        request.state.user = User(username=STATIC_USER)
        return  # the chart's optional KDIGITS_TOKEN: the operator's own, unrestricted
    user = await run_in_threadpool(reviewer.authenticate, token)
    if user is None:
        raise ApiError(401, "the bearer token was not accepted by the Kubernetes TokenReview")
    request.state.user = user
    namespace = await request_namespace(request)
    all_namespaces = request.query_params.get("allNamespaces", "").lower() in ("1", "true")
    target = target_of(request.method, request.url.path, namespace, all_namespaces)
    if target is None:
        return
    if target.all_namespaces:
        everywhere = await run_in_threadpool(reviewer.allowed, user, "list", target.resource, "")
        if not everywhere:
            request.state.may_list = lambda ns: reviewer.allowed(user, "list", target.resource, ns)
        return
    if not await run_in_threadpool(
        reviewer.allowed, user, target.verb, target.resource, target.namespace, target.name
    ):
        what = f"{target.resource}/{target.name}" if target.name else target.resource
        raise ApiError(
            403,
            f'user "{user.username}" may not {target.verb} {what} (kdigits.io) in namespace '
            f'"{target.namespace}"',
        )
    if request.url.path.endswith("/clone") and target.name is None:
        source = request.url.path.split("/")[4]
        if not await run_in_threadpool(
            reviewer.allowed, user, "get", target.resource, target.namespace, source
        ):
            raise ApiError(
                403,
                f'user "{user.username}" may not get {target.resource}/{source} (kdigits.io) '
                f'in namespace "{target.namespace}"',
            )
