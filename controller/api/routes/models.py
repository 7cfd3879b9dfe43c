"""/api/v1/models: create, list, get, metrics, logs, abort, delete, clone, history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller.api import admission
from controller.api.deps import NamespaceDep, ReconcilerDep, SettingsDep, StoreDep
from controller.api.routes import common
from controller.api.schemas import CloneBody, ModelCreate, ModelList, ModelMetrics
from controller.settings import Settings
from controller.store import Store
from controller.tail import metric_series
from jobs.specs import Model, ObjectMeta, ResourceName

router = APIRouter(
    prefix="/api/v1/models",
    tags=["models"],
    **common.ROUTER_OPTIONS,
)
routes = common.ResourceRoutes(router, Model, ModelList, "model", "models")


def _admit(body: ModelCreate, namespace: str, settings: Settings, store: Store) -> None:
    admission.check_model(body.spec, namespace, settings, store)


create_model = routes.create(ModelCreate, _admit)


read_models = routes.list()
read_model = routes.read()


@router.get("/{name}/metrics", response_model=ModelMetrics)
def read_model_metrics(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    """Every metric series the training reported (events.jsonl plus live log lines)."""
    model = common.get(store, Model, name, namespace)
    return ModelMetrics(
        model=name,
        phase=model.status.phase.value,
        epoch=model.status.epoch,
        latest=model.status.metrics,
        series=metric_series(reconciler.events(model)),
        snapshots=model.status.snapshots,
    )


read_model_logs = routes.logs()
abort_model = routes.abort()
delete_model = routes.delete()


@router.post(
    "/{name}/clone", response_model=Model, status_code=201, response_model_exclude_none=True
)
def clone_model(
    body: CloneBody,
    store: StoreDep,
    settings: SettingsDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    """A new model with the same spec (DIGITS' Clone Job)."""
    original = common.get(store, Model, name, namespace)
    admission.check_model(original.spec, namespace, settings, store)
    labels = body.labels if body.labels is not None else dict(original.metadata.labels)
    meta = ObjectMeta(name=body.name, namespace=namespace, labels=labels)
    obj = store.create(Model(metadata=meta, spec=original.spec.model_copy(deep=True)))
    reconciler.wake()
    return obj


read_model_history = routes.history()
