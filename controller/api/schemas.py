"""Request and response bodies beyond the resources themselves (which are jobs.specs')."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from jobs.specs import (
    API_VERSION,
    Dataset,
    DatasetSpec,
    Model,
    ModelSpec,
    ObjectMeta,
    PretrainedModel,
    ResourceName,
    SnapshotStatus,
)


class Schema(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class CreateBody(Schema):
    """POST body: the object without status; apiVersion and kind are optional."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["kdigits.io/v1alpha1"] | None = API_VERSION
    metadata: ObjectMeta


class DatasetCreate(CreateBody):
    kind: Literal["Dataset"] | None = "Dataset"
    spec: DatasetSpec


class ModelCreate(CreateBody):
    kind: Literal["Model"] | None = "Model"
    spec: ModelSpec


class ListMeta(Schema):
    continue_: str | None = Field(
        None, alias="continue", description="Pass as ?continue= to get the next page"
    )


class DatasetList(Schema):
    api_version: str = API_VERSION
    kind: Literal["DatasetList"] = "DatasetList"
    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[Dataset]


class ModelList(Schema):
    api_version: str = API_VERSION
    kind: Literal["ModelList"] = "ModelList"
    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[Model]


class PretrainedModelList(Schema):
    api_version: str = API_VERSION
    kind: Literal["PretrainedModelList"] = "PretrainedModelList"
    metadata: ListMeta = Field(default_factory=ListMeta)
    items: list[PretrainedModel]


class CloneBody(Schema):
    name: ResourceName = Field(description="Name of the new model")
    labels: dict[str, str] | None = Field(None, description="Labels; empty: the original's")


class MetricPoint(Schema):
    epoch: float
    value: float | None
    time: float | None = None


class MetricSeries(Schema):
    name: str = Field(description="loss, accuracy, lr, images_per_second...")
    split: str | None = Field(None, description="train, val or test")
    key: str = Field(description="The key in status.metrics, e.g. valAccuracy")
    points: list[MetricPoint]


class ModelMetrics(Schema):
    model: str
    phase: str
    epoch: float
    latest: dict[str, float]
    series: list[MetricSeries]
    snapshots: list[SnapshotStatus]


class TransitionOut(Schema):
    time: str
    phase: str
    attempt: int
    message: str


class RayInfo(Schema):
    address: str
    available: bool
    total: dict[str, float] = Field(default_factory=dict, description="CPU, GPU, memory...")
    free: dict[str, float] = Field(default_factory=dict)
    error: str | None = None


class Info(Schema):
    version: str
    store: str = Field(description="Object store URL")
    job_store: str = Field(description="Where specs and status are kept")
    ray: RayInfo
    limits: dict[str, Any]
    data_roots: list[str]


class Health(Schema):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
