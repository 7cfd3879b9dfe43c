"""/api/v1/models: create, list, get, metrics, logs, abort, delete, clone, history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from controller.api import admission
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
from controller.api.errors import AUTH_RESPONSES, ERROR_RESPONSES
from controller.api.routes import common
from controller.api.routes.datasets import LOG_RESPONSES
from controller.api.schemas import (
    CloneBody,
    ModelCreate,
    ModelList,
    ModelMetrics,
    TransitionOut,
)
from controller.tail import metric_series
from jobs.specs import Model, ObjectMeta, ResourceName

router = APIRouter(
    prefix="/api/v1/models",
    tags=["models"],
    dependencies=[AuthDep],
    responses={**AUTH_RESPONSES, **ERROR_RESPONSES},
)


def _get(store: StoreDep, name: str, namespace: str) -> Model:
    obj = store.get("Model", name, namespace)
    assert isinstance(obj, Model)
    return obj


@router.post("", response_model=Model, status_code=201, response_model_exclude_none=True)
def create_model(
    body: ModelCreate,
    store: StoreDep,
    settings: SettingsDep,
    reconciler: ReconcilerDep,
    namespace: Annotated[str | None, Query(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] = None,
) -> Any:
    ns = common.body_namespace(body, namespace)
    admission.check_model(body.spec, ns, settings, store)
    obj = store.create(common.new_object(Model, body, ns))
    reconciler.wake()
    return obj


@router.get("", response_model=ModelList, response_model_exclude_none=True)
def read_models(
    store: StoreDep,
    scope: ListScopeDep,
    group: GroupDep = None,
    limit: LimitDep = None,
    continue_: ContinueDep = None,
) -> ModelList:
    items, meta = common.list_page(
        store, "Model", scope.namespace, group, limit, continue_, scope.visible
    )
    return ModelList(items=items, metadata=meta)


@router.get("/{name}", response_model=Model, response_model_exclude_none=True)
def read_model(store: StoreDep, name: ResourceName, namespace: NamespaceDep = "default") -> Any:
    return _get(store, name, namespace)


@router.get("/{name}/metrics", response_model=ModelMetrics)
def read_model_metrics(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    """Every metric series the training reported (events.jsonl plus live log lines)."""
    model = _get(store, name, namespace)
    return ModelMetrics(
        model=name,
        phase=model.status.phase.value,
        epoch=model.status.epoch,
        latest=model.status.metrics,
        series=metric_series(reconciler.events(model)),
        snapshots=model.status.snapshots,
    )


@router.get("/{name}/logs", response_model=None, responses=LOG_RESPONSES)
def read_model_logs(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
    follow: Annotated[bool, Query(description="Stream until the job ends")] = False,
    attempt: Annotated[int | None, Query(ge=1, le=100, description="Default: latest")] = None,
) -> Response:
    return common.logs_response(store, reconciler, _get(store, name, namespace), follow, attempt)


@router.post("/{name}/abort", response_model=Model, response_model_exclude_none=True)
def abort_model(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    return common.abort(store, reconciler, _get(store, name, namespace))


@router.delete("/{name}", response_model=Model, response_model_exclude_none=True)
def delete_model(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    return common.delete(store, reconciler, _get(store, name, namespace))


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
    original = _get(store, name, namespace)
    admission.check_model(original.spec, namespace, settings, store)
    labels = body.labels if body.labels is not None else dict(original.metadata.labels)
    meta = ObjectMeta(name=body.name, namespace=namespace, labels=labels)
    obj = store.create(Model(metadata=meta, spec=original.spec.model_copy(deep=True)))
    reconciler.wake()
    return obj


@router.get("/{name}/history", response_model=list[TransitionOut])
def read_model_history(
    store: StoreDep, name: ResourceName, namespace: NamespaceDep = "default"
) -> Any:
    return common.history(store, "Model", name, namespace)
