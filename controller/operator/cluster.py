"""Cluster mode, assembled: the services of `kdigits serve` on Kubernetes.

The job store is the custom resources (KubernetesStore) with an Event per transition, the REST
API authenticates and authorises with TokenReview and SubjectAccessReview, and the kopf operator
runs beside the reconciler; everything else (Ray backend, object store, metrics) is the same as
on one machine. Selected by `KDIGITS_KUBERNETES=true` or `kdigits serve --kubernetes`.
"""

from __future__ import annotations

from typing import Any

from kubernetes.client import ApiClient

from controller.api.k8s_auth import AccessReviewer
from controller.operator import kube
from controller.operator.events import EventRecorder
from controller.operator.handlers import OperatorContext
from controller.operator.runner import PROGRESS_INTERVAL_S, Operator
from controller.services import Services
from controller.settings import Settings
from controller.store.kubernetes import KubernetesStore, is_admitted


def build_services(
    settings: Settings,
    api_client: ApiClient | None = None,
    *,
    finalize_retries: int = 20,
    finalize_delay: float = 3.0,
    progress_interval: float = PROGRESS_INTERVAL_S,
    **services_kwargs: Any,
) -> Services:
    """Services whose start() also starts the operator (and stop() stops it)."""
    api_client = api_client or kube.load_api_client()
    events = EventRecorder(api_client)
    store = KubernetesStore(api_client, on_transition=events.transition)
    services = Services.build(settings, store=store, **services_kwargs)
    services.access = AccessReviewer(api_client)
    services.reconciler.admitted = is_admitted
    context = OperatorContext(
        services=services,
        store=store,
        events=events,
        api_configuration=api_client.configuration,
        finalize_retries=finalize_retries,
        finalize_delay=finalize_delay,
    )
    services.operator = Operator(context, progress_interval=progress_interval)
    return services
