"""Dependencies shared by the routes: services, authentication, namespace and paging."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request

from controller.api.errors import ApiError
from controller.metrics import Metrics
from controller.reconciler import Reconciler
from controller.services import Services
from controller.settings import LOOPBACK_HOSTS, Settings
from controller.store import Store
from jobs.specs import DNS1123_LABEL
from jobs.storage import ObjectStore


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


def get_store(services: ServicesDep) -> Store:
    return services.store


def get_objects(services: ServicesDep) -> ObjectStore:
    return services.objects


def get_reconciler(services: ServicesDep) -> Reconciler:
    return services.reconciler


def get_metrics(services: ServicesDep) -> Metrics:
    return services.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
ObjectsDep = Annotated[ObjectStore, Depends(get_objects)]
ReconcilerDep = Annotated[Reconciler, Depends(get_reconciler)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def require_token(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Outside loopback (a remote client or a non-loopback bind) a bearer token is needed."""
    client = request.client.host if request.client else ""
    local = client in LOOPBACK_HOSTS and services.bind_host in LOOPBACK_HOSTS
    token = services.settings.token
    if local and not token:
        return
    if local and authorization is None:
        return  # a token is configured, but loopback clients may still omit it
    if not token:
        raise ApiError(401, "this server has no KDIGITS_TOKEN: only loopback clients may call it")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
        raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer <token>)")


async def authorize(
    request: Request,
    services: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Cluster mode: Kubernetes TokenReview + SubjectAccessReview; otherwise the token check."""
    if services.access is not None:
        from controller.api.k8s_auth import authorize as review

        await review(request, services.access, authorization, services.settings.token)
        return
    require_token(request, services, authorization)


AuthDep = Depends(authorize)

NamespaceDep = Annotated[
    str,
    Query(
        min_length=1,
        max_length=63,
        pattern=DNS1123_LABEL,
        description="Namespace of the object (default: default)",
    ),
]
LimitDep = Annotated[int | None, Query(ge=1, le=1000, description="Page size")]
ContinueDep = Annotated[
    str | None,
    Query(alias="continue", max_length=2048, description="Token from the previous page"),
]
GroupDep = Annotated[
    str | None,
    Query(max_length=63, description="Only objects with label kdigits.io/group=<group>"),
]


@dataclass(frozen=True)
class ListScope:
    """Where a listing looks: one namespace, or all (`allNamespaces=true`) of those visible."""

    namespace: str | None
    visible: Callable[[str], bool] | None = None


def list_scope(
    request: Request,
    namespace: NamespaceDep = "default",
    all_namespaces: Annotated[
        bool, Query(alias="allNamespaces", description="List every namespace you may read")
    ] = False,
) -> ListScope:
    visible = getattr(request.state, "may_list", None)  # set by the cluster-mode authorisation
    return ListScope(None if all_namespaces else namespace, visible)


ListScopeDep = Annotated[ListScope, Depends(list_scope)]
