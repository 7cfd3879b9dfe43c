"""/api/v1/pretrained-models: list, get, delete (upload and make-from-model: issue 5)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controller.api.deps import (
    AuthDep,
    ContinueDep,
    GroupDep,
    LimitDep,
    ListScopeDep,
    NamespaceDep,
    ReconcilerDep,
    StoreDep,
)
from controller.api.errors import AUTH_RESPONSES, ERROR_RESPONSES
from controller.api.routes import common
from controller.api.schemas import PretrainedModelList
from jobs.specs import PretrainedModel, ResourceName

router = APIRouter(
    prefix="/api/v1/pretrained-models",
    tags=["pretrained-models"],
    dependencies=[AuthDep],
    responses={**AUTH_RESPONSES, **ERROR_RESPONSES},
)


@router.get("", response_model=PretrainedModelList, response_model_exclude_none=True)
def read_pretrained_models(
    store: StoreDep,
    scope: ListScopeDep,
    group: GroupDep = None,
    limit: LimitDep = None,
    continue_: ContinueDep = None,
) -> PretrainedModelList:
    items, meta = common.list_page(
        store, "PretrainedModel", scope.namespace, group, limit, continue_, scope.visible
    )
    return PretrainedModelList(items=items, metadata=meta)


@router.get("/{name}", response_model=PretrainedModel, response_model_exclude_none=True)
def read_pretrained_model(
    store: StoreDep, name: ResourceName, namespace: NamespaceDep = "default"
) -> Any:
    return store.get("PretrainedModel", name, namespace)


@router.delete("/{name}", response_model=PretrainedModel, response_model_exclude_none=True)
def delete_pretrained_model(
    store: StoreDep,
    reconciler: ReconcilerDep,
    name: ResourceName,
    namespace: NamespaceDep = "default",
) -> Any:
    return common.delete(store, reconciler, store.get("PretrainedModel", name, namespace))
