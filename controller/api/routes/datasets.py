"""/api/v1/datasets: create, list, get, delete, stats, mean image, logs, abort, history."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Response

from controller.api import admission
from controller.api.deps import NamespaceDep, ObjectsDep, StoreDep
from controller.api.errors import ApiError
from controller.api.routes import common
from controller.api.schemas import DatasetCreate, DatasetList
from controller.reconciler import prefix_of
from controller.settings import Settings
from controller.store import Store
from jobs.specs import Dataset, Model, ResourceName
from jobs.storage import ObjectNotFound

router = APIRouter(
    prefix="/api/v1/datasets",
    tags=["datasets"],
    **common.ROUTER_OPTIONS,
)
routes = common.ResourceRoutes(router, Dataset, DatasetList, "dataset", "datasets")

PNG_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        "description": "The mean image",
    }
}


def _admit(body: DatasetCreate, namespace: str, settings: Settings, store: Store) -> None:
    admission.check_dataset(body.spec, settings)


create_dataset = routes.create(DatasetCreate, _admit)


def _refuse_if_used(store: Store, dataset: Dataset) -> None:
    """A dataset goes only when no model (not itself being deleted) names it."""
    name, namespace = dataset.metadata.name, dataset.metadata.namespace
    users = [
        m.metadata.name
        for m in store.list("Model", namespace).items
        if isinstance(m, Model) and m.spec.dataset == name and m.metadata.deletion_timestamp is None
    ]
    common.conflict_unless_unused(f'dataset "{name}"', users, "delete them first")


read_datasets = routes.list()
read_dataset = routes.read()
delete_dataset = routes.delete(_refuse_if_used)


@router.get("/{name}/stats", response_model=dict[str, Any])
def read_dataset_stats(
    store: StoreDep, objects: ObjectsDep, name: ResourceName, namespace: NamespaceDep = "default"
) -> Any:
    dataset = common.get(store, Dataset, name, namespace)
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
    dataset = common.get(store, Dataset, name, namespace)
    try:
        data = objects.get_bytes(f"{prefix_of(dataset)}mean.png")
    except ObjectNotFound:
        raise ApiError(404, f'dataset "{name}" has no mean image yet') from None
    return Response(content=data, media_type="image/png")


read_dataset_logs = routes.logs()
abort_dataset = routes.abort()
read_dataset_history = routes.history()
