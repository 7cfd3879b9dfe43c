"""The one contract: Dataset, Model and PretrainedModel specs and their status.

The REST request bodies, the CRD openAPIV3Schema (generated from these classes into
`k8s/crds/` and `charts/kdigits/crds/`) and the job entrypoints all use these models, so a
field is defined, defaulted and validated in exactly one place. JSON names are camelCase
(aliases), Python names snake_case; both are accepted on input. Import-light: pydantic only.
"""

from __future__ import annotations

import enum
import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "kdigits.io"
VERSION = "v1alpha1"
API_VERSION: Final = "kdigits.io/v1alpha1"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ResourceName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS1123_LABEL)]
"""A Kubernetes object name (DNS-1123 label): what a Dataset, Model or namespace is called."""

NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=4096)]


def _exactly_one(obj: BaseModel, fields: tuple[str, ...], where: str) -> None:
    chosen = [f for f in fields if getattr(obj, f) is not None]
    if len(chosen) != 1:
        names = ", ".join(to_camel(f) for f in fields)
        got = ", ".join(to_camel(f) for f in chosen) or "none"
        raise ValueError(f"{where} must set exactly one of {names} (got {got})")


def _one_of_schema(*fields: str) -> dict[str, Any]:
    """JSON-schema `oneOf` over required keys: allowed in a structural CRD schema too."""
    return {"oneOf": [{"required": [f]} for f in fields]}


class SpecModel(BaseModel):
    """Base for every contract model: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
    )

    def to_json_dict(self) -> dict[str, Any]:
        """The camelCase JSON form, as REST, the CRD and `spec.json` carry it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Phase(enum.StrEnum):
    """DIGITS' job states under Kubernetes-style names."""

    PENDING = "Pending"  # DIGITS INIT
    QUEUED = "Queued"  # WAIT
    RUNNING = "Running"  # RUN
    SUCCEEDED = "Succeeded"  # DONE
    FAILED = "Failed"  # ERROR
    ABORTED = "Aborted"  # ABORT

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED, Phase.ABORTED)


# --------------------------------------------------------------------------- datasets


class FolderSource(SpecModel):
    """Folders of images with one sub-folder per class (the class is the folder name)."""

    train: NonEmpty = Field(description="Folder of training images, one sub-folder per class")
    val: NonEmpty | None = Field(
        None, description="Separate validation folder; when set, split.valPercent is ignored"
    )
    test: NonEmpty | None = Field(
        None, description="Separate test folder; when set, split.testPercent is ignored"
    )


class TextfileSource(SpecModel):
    """List files of `path label` lines (label = line number in the labels file)."""

    train: NonEmpty = Field(description="List file of training images: `path label` per line")
    val: NonEmpty | None = Field(None, description="List file of validation images")
    test: NonEmpty | None = Field(None, description="List file of test images")
    labels: NonEmpty = Field(description="Labels file: one class name per line")
    root: NonEmpty | None = Field(
        None, description="Folder that relative image paths in the list files resolve against"
    )


class S3Source(SpecModel):
    """A bucket prefix laid out like a folder source: `<prefix>/train/<class>/...`."""

    endpoint: Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+(/.*)?$")] | None = Field(
        None, description="S3 endpoint URL; empty for AWS or the store's own endpoint"
    )
    bucket: Annotated[
        str, StringConstraints(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+$")
    ] = Field(description="Bucket name")
    prefix: Annotated[str, StringConstraints(max_length=1024)] = Field(
        "", description="Key prefix holding train/, and optionally val/ and test/, folders"
    )
    credentials_secret: ResourceName | None = Field(
        None,
        description=(
            "Name of a Kubernetes Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
            "empty: the credentials in the job's environment. Never inline."
        ),
    )


class DatasetSource(SpecModel):
    """Where the images come from: exactly one of folder, textfile or s3."""

    model_config = ConfigDict(json_schema_extra=_one_of_schema("folder", "textfile", "s3"))

    folder: FolderSource | None = None
    textfile: TextfileSource | None = None
    s3: S3Source | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSource:
        _exactly_one(self, ("folder", "textfile", "s3"), "source")
        return self


class ResizeMode(enum.StrEnum):
    """DIGITS' resize modes."""

    SQUASH = "squash"  # ignore the aspect ratio
    CROP = "crop"  # scale the shorter side to fit, centre-crop the longer
    FILL = "fill"  # scale the longer side to fit, pad with random noise
    HALF_CROP = "half_crop"  # half of the difference cropped, half filled


class ImageSpec(SpecModel):
    """The stored image type and size."""

    channels: Literal[1, 3] = Field(3, description="1 for grayscale, 3 for color")
    width: int = Field(256, ge=1, le=4096, description="Stored image width in pixels")
    height: int = Field(256, ge=1, le=4096, description="Stored image height in pixels")
    resize_mode: ResizeMode = Field(ResizeMode.SQUASH, description="How images are resized")


class SplitSpec(SpecModel):
    """How the training images are split into train, validation and test."""

    val_percent: float = Field(25, ge=0, le=100, description="% of images for validation")
    test_percent: float = Field(0, ge=0, le=100, description="% of images for test")
    min_per_class: int = Field(2, ge=1, description="Classes with fewer images are dropped")
    max_per_class: int | None = Field(
        None, ge=1, description="At most this many images are used per class"
    )
    shuffle: bool = Field(True, description="Shuffle images before splitting and in shards")
    seed: int | None = Field(
        None, ge=0, description="Random seed; empty: derived from the dataset's id"
    )

    @model_validator(mode="after")
    def _percentages(self) -> SplitSpec:
        if self.val_percent + self.test_percent >= 100:
            raise ValueError(
                "valPercent + testPercent must be less than 100 "
                f"(got {self.val_percent:g} + {self.test_percent:g})"
            )
        if self.max_per_class is not None and self.max_per_class < self.min_per_class:
            raise ValueError(
                f"maxPerClass ({self.max_per_class}) must be at least "
                f"minPerClass ({self.min_per_class})"
            )
        return self


class Encoding(enum.StrEnum):
    """How images are stored in the shards."""

    NONE = "none"  # raw uint8 pixels: largest, fastest to read
    PNG = "png"  # lossless
    JPG = "jpg"  # lossy, smallest


class DatasetSpec(SpecModel):
    """A DIGITS image classification dataset."""

    source: DatasetSource
    image: ImageSpec = Field(default_factory=ImageSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    encoding: Encoding = Field(Encoding.PNG, description="Image encoding inside the shards")
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first when queued")
    max_retries: int = Field(1, ge=0, le=10, description="Failed attempts retried this often")


# --------------------------------------------------------------------------- models


class PreviousNetwork(SpecModel):
    """Start from another model's snapshot (fine-tune)."""

    model: ResourceName = Field(description="Name of a Model in the same namespace")
    epoch: float | None = Field(None, gt=0, description="Snapshot epoch; empty: the last one")


class PretrainedNetwork(SpecModel):
    """Start from a PretrainedModel."""

    name: ResourceName = Field(description="Name of a PretrainedModel in the same namespace")


class LayerType(enum.StrEnum):
    CONV = "conv"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    RELU = "relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    BATCHNORM = "batchnorm"
    DROPOUT = "dropout"
    FLATTEN = "flatten"
    LINEAR = "linear"
    ADAPTIVE_AVGPOOL = "adaptive_avgpool"


class Layer(SpecModel):
    """One layer of a custom network; input shapes are inferred from the dataset."""

    type: LayerType
    out_channels: int | None = Field(None, ge=1, le=65536, description="conv: output channels")
    kernel_size: int | None = Field(None, ge=1, le=64, description="conv, pool: kernel size")
    stride: int | None = Field(None, ge=1, le=64, description="conv, pool: stride")
    padding: int | None = Field(None, ge=0, le=64, description="conv, pool: zero padding")
    out_features: int | None = Field(
        None, ge=1, le=1_000_000, description="linear: outputs; empty on the last: the classes"
    )
    p: float | None = Field(None, ge=0, lt=1, description="dropout: probability")
    output_size: int | None = Field(None, ge=1, le=1024, description="adaptive_avgpool: size")

    @model_validator(mode="after")
    def _required_params(self) -> Layer:
        if self.type == LayerType.CONV and (self.out_channels is None or self.kernel_size is None):
            raise ValueError("a conv layer needs outChannels and kernelSize")
        if self.type in (LayerType.MAXPOOL, LayerType.AVGPOOL) and self.kernel_size is None:
            raise ValueError(f"a {self.type.value} layer needs kernelSize")
        if self.type == LayerType.ADAPTIVE_AVGPOOL and self.output_size is None:
            raise ValueError("an adaptive_avgpool layer needs outputSize")
        return self


class CustomNetwork(SpecModel):
    """A declarative layer list, or Python source when the operator enables it."""

    model_config = ConfigDict(json_schema_extra=_one_of_schema("layers", "python"))

    layers: list[Layer] | None = Field(None, min_length=1, max_length=512)
    python: Annotated[str, StringConstraints(max_length=200_000)] | None = Field(
        None,
        description=(
            "Python source defining build_network(channels, height, width, classes); "
            "only accepted when the operator sets KDIGITS_ALLOW_CUSTOM_PYTHON"
        ),
    )

    @model_validator(mode="after")
    def _one_definition(self) -> CustomNetwork:
        _exactly_one(self, ("layers", "python"), "network.custom")
        return self


StandardNetworkName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")
]


class NetworkSpec(SpecModel):
    """Which network to train: exactly one of standard, previous, pretrained, custom."""

    model_config = ConfigDict(
        json_schema_extra=_one_of_schema("standard", "previous", "pretrained", "custom")
    )

    standard: StandardNetworkName | None = Field(
        None, description="lenet, alexnet, googlenet, or a torchvision classification model"
    )
    previous: PreviousNetwork | None = None
    pretrained: PretrainedNetwork | None = None
    custom: CustomNetwork | None = None

    @model_validator(mode="after")
    def _one_network(self) -> NetworkSpec:
        _exactly_one(self, ("standard", "previous", "pretrained", "custom"), "network")
        return self


class TrainingSpec(SpecModel):
    """How long and in what steps to train."""

    epochs: int = Field(30, ge=1, le=100_000, description="Training epochs")
    batch_size: int | None = Field(
        None, ge=1, le=65_536, description="Batch size; empty: the network's default"
    )
    batch_accumulation: int = Field(1, ge=1, le=1024, description="Batches per solver step")
    snapshot_interval: float = Field(1, gt=0, description="Epochs between snapshots")
    validation_interval: float = Field(1, gt=0, description="Epochs between validations")
    shuffle: bool = Field(True, description="Shuffle the training set every epoch")
    seed: int | None = Field(None, ge=0, description="Random seed; empty: not reproducible")


class SolverType(enum.StrEnum):
    SGD = "sgd"
    NESTEROV = "nesterov"
    ADAGRAD = "adagrad"
    RMSPROP = "rmsprop"
    ADADELTA = "adadelta"
    ADAM = "adam"
    ADAMW = "adamw"


class LrPolicyType(enum.StrEnum):
    FIXED = "fixed"
    STEP = "step"
    MULTISTEP = "multistep"
    EXP = "exp"
    INV = "inv"
    POLY = "poly"
    SIGMOID = "sigmoid"


# DIGITS' form defaults for each policy's gamma (power is for inv and poly).
LR_POLICY_DEFAULT_GAMMA: dict[LrPolicyType, float] = {
    LrPolicyType.STEP: 0.1,
    LrPolicyType.MULTISTEP: 0.5,
    LrPolicyType.EXP: 0.95,
    LrPolicyType.INV: 0.1,
    LrPolicyType.SIGMOID: 0.1,
}
LR_POLICY_DEFAULT_POWER: dict[LrPolicyType, float] = {
    LrPolicyType.INV: 0.5,
    LrPolicyType.POLY: 3.0,
}


class LrPolicySpec(SpecModel):
    """DIGITS' learning-rate policies; positions are in % of training, as DIGITS had them.

    With p = 100 * iteration / total iterations:
    fixed: lr; step: lr * gamma^floor(p / stepSize); multistep: lr * gamma^(steps passed);
    exp: lr * gamma^p; inv: lr * (1 + gamma p)^-power; poly: lr * (1 - p/100)^power;
    sigmoid: lr / (1 + exp(gamma (p - stepSize))).
    """

    policy: LrPolicyType = Field(LrPolicyType.STEP, description="The policy")
    step_size: float = Field(33, gt=0, le=100, description="step, sigmoid: % of training")
    step_values: list[float] = Field(
        default_factory=lambda: [50.0, 85.0],
        max_length=64,
        description="multistep: % of training at which the rate drops",
    )
    gamma: float | None = Field(None, gt=0, description="Decay factor; empty: DIGITS' default")
    power: float | None = Field(None, gt=0, description="inv, poly: power; empty: default")

    @field_validator("step_values")
    @classmethod
    def _increasing(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 100 for v in values):
            raise ValueError("every step value must be a % of training in (0, 100]")
        if sorted(values) != values:
            raise ValueError("step values must be increasing")
        return values

    def effective_gamma(self) -> float:
        return self.gamma if self.gamma is not None else LR_POLICY_DEFAULT_GAMMA.get(self.policy, 1)

    def effective_power(self) -> float:
        return self.power if self.power is not None else LR_POLICY_DEFAULT_POWER.get(self.policy, 1)


class SolverSpec(SpecModel):
    """The optimiser and its learning rate."""

    type: SolverType = Field(SolverType.SGD, description="Optimiser")
    base_lr: float = Field(0.01, gt=0, le=100, description="Base learning rate")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd, nesterov, rmsprop: momentum")
    weight_decay: float = Field(1e-4, ge=0, lt=1, description="L2 weight decay")
    rms_decay: float = Field(0.99, gt=0, lt=1, description="rmsprop: decay of the mean square")
    lr_policy: LrPolicySpec = Field(default_factory=LrPolicySpec)

    @field_validator("type", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class MeanSubtraction(enum.StrEnum):
    NONE = "none"
    IMAGE = "image"
    PIXEL = "pixel"


class Flip(enum.StrEnum):
    NONE = "none"
    LR = "lr"
    UD = "ud"
    BOTH = "both"


class HsvJitter(SpecModel):
    """Random HSV shifts (fractions of the full range)."""

    hue: float = Field(0, ge=0, le=0.5)
    saturation: float = Field(0, ge=0, le=1)
    value: float = Field(0, ge=0, le=1)


class TransformSpec(SpecModel):
    """Data transformations: DIGITS' mean subtraction, crop and augmentations."""

    mean_subtraction: MeanSubtraction = Field(MeanSubtraction.IMAGE)
    crop_size: int | None = Field(
        None, ge=1, le=4096, description="Random crop in training, centre crop in evaluation"
    )
    flip: Flip = Field(Flip.NONE, description="Random flips in training")
    rotation: float = Field(0, ge=0, le=180, description="Random rotation up to ± degrees")
    scale: float = Field(0, ge=0, lt=1, description="Random rescale up to ± this fraction")
    noise: float = Field(0, ge=0, le=1, description="Gaussian noise std, fraction of 255")
    contrast: float = Field(0, ge=0, lt=1, description="Random contrast change up to ±")
    hsv: HsvJitter = Field(default_factory=HsvJitter)


class ResourcesSpec(SpecModel):
    """Ray Train scaling: data-parallel workers and what each one gets."""

    workers: int = Field(1, ge=1, le=256, description="Data-parallel workers")
    gpus_per_worker: float = Field(0, ge=0, le=16, description="GPUs per worker (0: CPU)")
    cpus_per_worker: float = Field(1, gt=0, le=256, description="CPUs per worker")
    mixed_precision: bool = Field(True, description="Automatic mixed precision on GPUs")


class ModelSpec(SpecModel):
    """A DIGITS image classification model: what to train, on what, and how."""

    dataset: ResourceName = Field(description="Name of a Dataset in the same namespace")
    network: NetworkSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    solver: SolverSpec = Field(default_factory=SolverSpec)
    transform: TransformSpec = Field(default_factory=TransformSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: int = Field(0, ge=-100, le=100, description="Higher runs first when queued")
    max_retries: int = Field(2, ge=0, le=10, description="Failed attempts retried this often")


# --------------------------------------------------------------------------- pretrained


class SnapshotRef(SpecModel):
    """A model's snapshot."""

    model: ResourceName
    epoch: float | None = Field(None, gt=0, description="Snapshot epoch; empty: the last one")


class PretrainedModelSpec(SpecModel):
    """A published model: a snapshot's files under `pretrained/<id>/`, ready to fine-tune."""

    from_model: SnapshotRef | None = Field(
        None, description="Make it from a model's snapshot; empty: files were uploaded"
    )
    network: StandardNetworkName | None = Field(None, description="Standard network name")
    layers: list[Layer] | None = Field(None, min_length=1, max_length=512)
    labels: list[Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=list, max_length=100_000, description="Class names; may be empty"
    )
    image: ImageSpec = Field(default_factory=ImageSpec)


# --------------------------------------------------------------------------- objects


class Condition(SpecModel):
    """A Kubernetes-style condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None


class JobStatus(SpecModel):
    """What every job-backed object reports."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase = Phase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    message: str = ""
    progress: float = Field(0, ge=0, le=1)
    eta: float | None = Field(None, description="Seconds left, as the job estimates it")
    submission_id: str | None = Field(None, description="The current Ray job submission id")
    attempt: int = 0
    waiting_for: str | None = Field(None, description="Why a Queued job has not started")
    start_time: datetime | None = None
    completion_time: datetime | None = None


class DatasetStatus(JobStatus):
    images: dict[str, int] = Field(default_factory=dict, description="Images per split")
    classes: int | None = None
    skipped: int | None = None


class SnapshotStatus(SpecModel):
    epoch: float
    key: str = Field(description="Object-store prefix of the snapshot")


class ModelStatus(JobStatus):
    epoch: float = 0
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Latest values, e.g. trainLoss, valAccuracy"
    )
    snapshots: list[SnapshotStatus] = Field(default_factory=list)


class PretrainedModelStatus(JobStatus):
    pass


class ObjectMeta(SpecModel):
    """The part of Kubernetes' ObjectMeta that kdigits reads and writes."""

    model_config = ConfigDict(extra="ignore")

    name: ResourceName
    namespace: ResourceName = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = Field(
        None, description="Set when deletion was requested; the object goes once cleaned up"
    )

    @field_validator("labels")
    @classmethod
    def _label_values(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not re.fullmatch(
                r"([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", key
            ):
                raise ValueError(f"label key {key!r} is not a valid Kubernetes label key")
            if value and not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value):
                raise ValueError(f"label {key!r} has an invalid value {value!r}")
        return labels


class Resource(SpecModel):
    """The envelope shared by REST bodies and custom resources."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["kdigits.io/v1alpha1"] = "kdigits.io/v1alpha1"
    metadata: ObjectMeta


class Dataset(Resource):
    kind: Literal["Dataset"] = "Dataset"
    spec: DatasetSpec
    status: DatasetStatus = Field(default_factory=DatasetStatus)


class Model(Resource):
    kind: Literal["Model"] = "Model"
    spec: ModelSpec
    status: ModelStatus = Field(default_factory=ModelStatus)


class PretrainedModel(Resource):
    kind: Literal["PretrainedModel"] = "PretrainedModel"
    spec: PretrainedModelSpec
    status: PretrainedModelStatus = Field(default_factory=PretrainedModelStatus)


KINDS: dict[str, type[Resource]] = {
    "Dataset": Dataset,
    "Model": Model,
    "PretrainedModel": PretrainedModel,
}
PLURALS: dict[str, str] = {
    "Dataset": "datasets",
    "Model": "models",
    "PretrainedModel": "pretrainedmodels",
}
