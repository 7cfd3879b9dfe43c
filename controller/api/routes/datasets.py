"""/api/v1/datasets: create, list, get, delete, stats, mean image, logs, abort, history."""

from __future__ import annotations

import json
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
    ObjectsDep,
    ReconcilerDep,
    SettingsDep,
    StoreDep,
)
from controller.api.errors import AUTH_RESPONSES, ERROR_RESPONSES, ApiError
from controller.api.routes import common
from controller.api.schemas import DatasetCreate, DatasetList, TransitionOut
from controller.reconciler import prefix_of
from jobs.specs import Dataset, Model, ResourceName
from jobs.storage import ObjectNotFound

router = APIRouter(
    prefix="/api/v1/datasets",
    tags=["datasets"],
    dependencies=[AuthDep],
    responses={**AUTH_RESPONSES, **ERROR_RESPONSES},
)

LOG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "The log"}
}
PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The mean image",
    }
}


def _get(store: StoreDep, name: str, namespace: str) -> Dataset:
    obj = store.get("Dataset", name, namespace)
    assert isinstance(obj, Dataset)
    return obj


@router.post("", response_model=Dataset, status_code=201, response_model_exclude_none=True)
def create_dataset(
    body: DatasetCreate,
    store: StoreDep,
    settings: SettingsDep,
    reconciler: ReconcilerDep,
    namespace: Annotated[str | None, Query(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] = None,
) -> Dataset:
    ns = common.body_namespace(body, namespace)
    admission.check_dataset(body.spec, settings)
    obj = store.create(common.new_object(Dataset, body, ns))
    reconciler.wake()
    return obj  # type: ignore[return-value]


@router.get("", response_model=DatasetList, response_model_exclude_none=True)
def read_datasets(
    store: StoreDep,
    scope: ListScopeDep,
    group: GroupDep = None,
    limit: LimitDep = None,
    continue_: ContinueDep = None,
) -> DatasetList:
    items, meta = common.list_page(
        store, "Dataset", scope.namespace, group, limit, continue_, scope.visible
    )
    return DatasetList(items=items, metadata=meta)


@router.get("/{name}", response_model=Dataset, response_model_exclude_none=True)
def read_dataset(store: StoreDep, name: ResourceName, namespace: NamespaceDep = "default") -> Any:
    return _get(store, name, namespace)


@router.delete("/{name}", response_model=Dataset, response_model_exclude_none=True)
def delete_dataset(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    dataset = _get(store, name, namespace)
    users = [
        m.metadata.name
        for m in store.list("Model", namespace).items
        if isinstance(m, Model) and m.spec.dataset == name and m.metadata.deletion_timestamp is None
    ]
    if users:
        raise ApiError(
            409,
            f'dataset "{name}" is used by model(s) {", ".join(sorted(users))}: delete them first',
        )
    return common.delete(store, reconciler, dataset)


@router.get("/{name}/stats", response_model=dict[str, Any])
def read_dataset_stats(
    store: StoreDep, objects: ObjectsDep, name: ResourceName, namespace: NamespaceDep = "default"
) -> Any:
    dataset = _get(store, name, namespace)
    try:
        return json.loads(objects.get_bytes(f"{prefix_of(dataset)}stats.json"))
    except ObjectNotFound:
        raise ApiError(
            404, f'dataset "{name}" has no stats yet (it is {dataset.status.phase.value})'
        ) from None


@router.get("/{name}/mean", response_model=None, responses=PNG_RESPONSES)
def read_dataset_mean(
    store: StoreDep, objects: ObjectsDep, name: ResourceName, namespace: NamespaceDep = "default"
) -> Response:
    dataset = _get(store, name, namespace)
    try:
        data = objects.get_bytes(f"{prefix_of(dataset)}mean.png")
    except ObjectNotFound:
        raise ApiError(404, f'dataset "{name}" has no mean image yet') from None
    return Response(content=data, media_type="image/png")


@router.get("/{name}/logs", response_model=None, responses=LOG_RESPONSES)
def read_dataset_logs(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
    follow: Annotated[bool, Query(description="Stream until the job ends")] = False,
    attempt: Annotated[int | None, Query(ge=1, le=100, description="Default: latest")] = None,
) -> Response:
    return common.logs_response(store, reconciler, _get(store, name, namespace), follow, attempt)


@router.post("/{name}/abort", response_model=Dataset, response_model_exclude_none=True)
def abort_dataset(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    return common.abort(store, reconciler, _get(store, name, namespace))


@router.get("/{name}/history", response_model=list[TransitionOut])
def read_dataset_history(
    store: StoreDep, name: ResourceName, namespace: NamespaceDep = "default"
) -> Any:
    return common.history(store, "Dataset", name, namespace)
