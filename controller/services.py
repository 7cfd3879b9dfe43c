"""Everything the API and the reconciler share, built once from the settings."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from controller.metrics import Metrics
from controller.ray_backend import RayBackend
from controller.reconciler import Reconciler
from controller.settings import LOOPBACK_HOSTS, Settings
from controller.store import SQLiteStore, Store
from jobs.specs import Dataset, Model
from jobs.storage import ObjectStore, open_store

if TYPE_CHECKING:  # cluster mode only (controller.operator.cluster sets them)
    from controller.api.k8s_auth import AccessReviewer
    from controller.operator.runner import Operator

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def ray_is_local(address: str) -> bool:
    return (urlparse(address).hostname or "") in LOOPBACK_HOSTS


@dataclass
class Services:
    settings: Settings
    store: Store
    objects: ObjectStore
    backend: RayBackend
    metrics: Metrics
    reconciler: Reconciler
    bind_host: str = "127.0.0.1"
    access: AccessReviewer | None = None  # cluster mode: TokenReview + SubjectAccessReview
    operator: Operator | None = None  # cluster mode: the kopf operator, run beside the loop

    @classmethod
    def build(
        cls,
        settings: Settings,
        store: Store | None = None,
        dataset_command: Callable[[Dataset], str] | None = None,
        model_command: Callable[[Model, str, str | None], str] | None = None,
    ) -> Services:
        if not settings.ray_dashboard_url:
            raise ValueError("KDIGITS_RAY_ADDRESS is empty: start a local Ray head first")
        store = store or SQLiteStore(settings.database)
        objects = open_store(settings.object_store_url)
        job_env = settings.job_env()
        if ray_is_local(settings.ray_dashboard_url):
            # A head on this machine runs jobs with this checkout and this interpreter.
            job_env.setdefault("PYTHONPATH", str(REPO_ROOT))
            if not settings.job_python:
                settings.job_python = sys.executable
        backend = RayBackend(settings.ray_dashboard_url, job_env)
        metrics = Metrics(store.count_by_phase)
        reconciler = Reconciler(
            settings,
            store,
            objects,
            backend,
            metrics,
            dataset_command=dataset_command,
            model_command=model_command,
        )
        return cls(settings, store, objects, backend, metrics, reconciler)

    def start(self) -> None:
        self.reconciler.start()
        if self.operator is not None:
            self.operator.start()

    def stop(self) -> None:
        if self.operator is not None:
            self.operator.stop()
        self.reconciler.stop()
        with contextlib.suppress(Exception):
            self.store.close()
