"""Using a trained model (DIGITS' "Trained Models" page): classify one, classify many, top-N per
category, download, and publish as a pretrained model. Thin routes over jobs.inference,
jobs.evaluation and jobs.export.

Form fields keep DIGITS' names (`image_file`, `image_path`, `image_url`, `image_list`,
`image_folder`, `epoch`, `top_k`). Image lists of up to `IN_PROCESS_MAX_IMAGES` images are
classified inside the request with the warm model; longer ones run as a Ray job
(`jobs.classify_job`) and the request waits for its answer, which has the same shape: one call,
one answer, however long the list.
"""

from __future__ import annotations

import shutil
import time
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from pydantic import Field
from starlette.background import BackgroundTask

from controller.api import inference
from controller.api.deps import (
    AuthDep,
    MetricsDep,
    NamespaceDep,
    ObjectsDep,
    ServicesDep,
    SettingsDep,
    StoreDep,
)
from controller.api.errors import AUTH_RESPONSES, ERROR_RESPONSES, ApiError, ErrorBody
from controller.api.schemas import Schema
from controller.reconciler import metric_label
from controller.store import AlreadyExists, NotFound
from jobs.specs import (
    DNS1123_LABEL,
    Model,
    ObjectMeta,
    Phase,
    PretrainedModel,
    PretrainedModelSpec,
    ResourceName,
)

INFERENCE_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "A path outside the data roots or a host not allowed"},
    413: {"model": ErrorBody, "description": "An upload over its size cap"},
    422: {"model": ErrorBody, "description": "Bad input: the field and the reason"},
    502: {"model": ErrorBody, "description": "The classify job on Ray failed"},
    503: {"model": ErrorBody, "description": "Ray is unavailable (long lists)"},
}

router = APIRouter(
    prefix="/api/v1/models",
    tags=["inference"],
    dependencies=[AuthDep],
    responses={**AUTH_RESPONSES, **ERROR_RESPONSES, **INFERENCE_RESPONSES},
)

EpochForm = Annotated[
    float | None, Form(gt=0, description="Snapshot epoch; empty: the last snapshot")
]
TopKForm = Annotated[int, Form(ge=1, le=1000, description="Labels per image")]
ImageListFile = Annotated[
    UploadFile | None, File(description="DIGITS' image list: `path [label]` per line")
]
FolderForm = Annotated[
    str | None, Form(max_length=4096, description="Folder relative list paths are under")
]
ImageFiles = Annotated[list[UploadFile] | None, File(description="Several images to classify")]


class ClassifyOut(Schema):
    predictions: list[list[Any]] = Field(description="[[label, probability], ...], best first")
    epoch: float | None = None
    layers: list[dict[str, Any]] | None = Field(None, description="With visualize=true")
    total_parameters: int | None = Field(None, description="With visualize=true")


class ClassifyManyOut(Schema):
    classifications: dict[str, list[list[Any]]]
    labels: list[str]
    count: int
    errors: dict[str, str] = Field(description="Images that could not be read, with the reason")
    evaluated: int | None = None
    top1_accuracy: float | None = None
    top5_accuracy: float | None = None
    confusion_matrix: list[list[int]] | None = Field(
        None, description="Rows: true class, columns: predicted, in labels.txt order"
    )
    per_class_accuracy: list[float | None] | None = None


class TopNCategory(Schema):
    label: str
    images: list[dict[str, Any]]


class TopNOut(Schema):
    top_n: list[TopNCategory] = Field(description="Per class, the N most confident images")
    count: int
    errors: dict[str, str]


class MakePretrainedBody(Schema):
    name: ResourceName | None = Field(None, description="Default: the model's name")
    epoch: float | None = Field(None, gt=0, description="Default: the last snapshot")


def _model(store: StoreDep, name: str, namespace: str) -> Model:
    obj = store.get("Model", name, namespace)
    assert isinstance(obj, Model)
    return obj


@router.post("/{name}/classify", response_model=ClassifyOut, response_model_exclude_none=True)
def classify_one(
    request: Request,
    store: StoreDep,
    objects: ObjectsDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    name: ResourceName,
    image_file: Annotated[UploadFile | None, File(description="The image")] = None,
    image_path: Annotated[
        str | None, Form(max_length=4096, description="An image inside the data roots")
    ] = None,
    image_url: Annotated[
        str | None, Form(max_length=4096, description="An image on an allowed host")
    ] = None,
    epoch: EpochForm = None,
    top_k: TopKForm = 5,
    visualize: Annotated[bool, Form(description="Per-layer statistics too")] = False,
    namespace: NamespaceDep = "default",
) -> Any:
    """Classify one image: an upload, a path inside the data roots, or a URL."""
    from jobs.evaluation import read_image_source

    given = [f for f, v in (("image_file", image_file), ("image_path", image_path),
                            ("image_url", image_url)) if v]  # fmt: skip
    if len(given) != 1:
        what = "none" if not given else ", ".join(given)
        raise ApiError(422, f"give exactly one of image_file, image_path, image_url (got {what})",
                       given[-1] if given else "image_file")  # fmt: skip
    model = _model(store, name, namespace)
    prefix = inference.snapshot_prefix(objects, model, epoch)
    loaded = inference.load(request, settings, objects, prefix)
    field = given[0]
    try:
        if image_file is not None:
            data = inference.read_upload(image_file, field, inference.MAX_IMAGE_UPLOAD_BYTES)
        elif image_path:
            data = read_image_source(path=image_path, roots=settings.data_root_paths)
        else:
            data = read_image_source(url=image_url, allowed_hosts=settings.url_hosts)
        started = time.perf_counter()
        if visualize:
            answer = loaded.visualize(data, top_k)
        else:
            answer = {"predictions": loaded.classify_one(data, top_k)}
        metrics.inference_latency.labels(metric_label(model)).observe(time.perf_counter() - started)
    except ValueError as error:
        raise inference.refusal(error, field) from None
    return {**answer, "epoch": loaded.info.epoch}


def _classify_many(
    request: Request,
    services: ServicesDep,
    model: Model,
    epoch: float | None,
    image_list: UploadFile | None,
    image_folder: str | None,
    image_files: list[UploadFile] | None,
    top_k: int,
    top_n: int = 0,
) -> tuple[dict[str, Any], Any]:
    """The classify-many answer, and the in-process result (None when run on Ray)."""
    from jobs.evaluation import (
        IN_PROCESS_MAX_IMAGES,
        classify_entries,
        classify_uploads,
        parse_image_list,
    )

    settings, objects = services.settings, services.objects
    if (image_list is None) == (not image_files):
        raise ApiError(422, "give an image_list or image_files (one of them)", "image_list")
    if image_folder and image_list is None:
        raise ApiError(422, "image_folder goes with image_list", "image_folder")
    prefix = inference.snapshot_prefix(objects, model, epoch)
    loaded = inference.load(request, settings, objects, prefix)
    if image_files:
        if len(image_files) > inference.MAX_FILES_UPLOAD:
            raise ApiError(
                413, f"more than {inference.MAX_FILES_UPLOAD} files: use image_list", "image_files"
            )
        uploads = [
            (
                inference.upload_name(f, i),
                inference.read_upload(f, "image_files", inference.MAX_IMAGE_UPLOAD_BYTES),
            )
            for i, f in enumerate(image_files)
        ]
        result = classify_uploads(loaded, uploads)
        return result.to_json(top_k), result
    assert image_list is not None
    text = inference.read_text(image_list, "image_list", inference.MAX_LIST_UPLOAD_BYTES)
    try:
        entries = parse_image_list(
            text,
            settings.data_root_paths,
            folder=image_folder or None,
            classes=loaded.info.classes,
            allowed_hosts=settings.url_hosts,
        )
    except ValueError as error:
        raise inference.refusal(error, "image_list") from None
    if len(entries) > IN_PROCESS_MAX_IMAGES:
        answer = inference.run_classify_job(
            services, model, prefix, text, folder=image_folder, top_k=top_k, top_n=top_n
        )
        return answer, None
    result = classify_entries(loaded, entries, allowed_hosts=settings.url_hosts)
    return result.to_json(top_k), result


@router.post(
    "/{name}/classify-many", response_model=ClassifyManyOut, response_model_exclude_none=True
)
def classify_many(
    request: Request,
    services: ServicesDep,
    store: StoreDep,
    name: ResourceName,
    image_list: ImageListFile = None,
    image_folder: FolderForm = None,
    image_files: ImageFiles = None,
    epoch: EpochForm = None,
    top_k: TopKForm = 5,
    namespace: NamespaceDep = "default",
) -> Any:
    """Classify an image list (`path [label]` lines) or several uploads; with labels, the
    top-1/top-5 accuracy, the confusion matrix and the per-class accuracy."""
    model = _model(store, name, namespace)
    answer, _ = _classify_many(
        request, services, model, epoch, image_list, image_folder, image_files, top_k
    )
    return answer


@router.post("/{name}/top-n", response_model=TopNOut)
def top_n(
    request: Request,
    services: ServicesDep,
    store: StoreDep,
    name: ResourceName,
    image_list: ImageListFile = None,
    image_folder: FolderForm = None,
    image_files: ImageFiles = None,
    epoch: EpochForm = None,
    top_n: Annotated[int, Form(ge=1, le=1000, description="Images per class")] = 9,
    namespace: NamespaceDep = "default",
) -> Any:
    """Per class, the N images the model is most confident belong to it (DIGITS: N = 9)."""
    from jobs.evaluation import top_n_per_category

    model = _model(store, name, namespace)
    answer, result = _classify_many(
        request, services, model, epoch, image_list, image_folder, image_files, 1, top_n
    )
    categories = answer["topN"] if result is None else top_n_per_category(result, top_n)
    return {"topN": categories, "count": answer["count"], "errors": answer["errors"]}


@router.get(
    "/{name}/download",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/gzip": {}, "application/zip": {}},
            "description": "`<model-name>_epoch_<N>.tar.gz` (or .zip)",
        }
    },
)
def download(
    store: StoreDep,
    objects: ObjectsDep,
    settings: SettingsDep,
    name: ResourceName,
    epoch: Annotated[float | None, Query(gt=0, description="Default: the last snapshot")] = None,
    format: Annotated[str, Query(pattern=r"^(tar\.gz|zip)$")] = "tar.gz",  # noqa: A002
    namespace: NamespaceDep = "default",
) -> FileResponse:
    """The snapshot as an archive: weights, network.json, labels, mean, info.json, ONNX, README."""
    from jobs.export import export_archive

    model = _model(store, name, namespace)
    prefix = inference.snapshot_prefix(objects, model, epoch)
    try:
        path = export_archive(
            objects,
            prefix,
            model.metadata.name,
            format,
            model_id=str(model.metadata.uid),
            allow_custom_python=settings.allow_custom_python,
        )
    except ValueError as error:
        raise inference.refusal(error, "format") from None
    media = "application/zip" if format == "zip" else "application/gzip"
    return FileResponse(
        path,
        media_type=media,
        filename=path.name,
        background=BackgroundTask(shutil.rmtree, path.parent, ignore_errors=True),
    )


@router.post(
    "/{name}/pretrained",
    response_model=PretrainedModel,
    status_code=201,
    response_model_exclude_none=True,
)
def make_pretrained(
    store: StoreDep,
    objects: ObjectsDep,
    name: ResourceName,
    body: MakePretrainedBody | None = None,
    namespace: NamespaceDep = "default",
) -> Any:
    """Publish a snapshot as a PretrainedModel (default name: the model's)."""
    from jobs.export import publish_pretrained

    body = body or MakePretrainedBody()
    model = _model(store, name, namespace)
    prefix = inference.snapshot_prefix(objects, model, body.epoch)
    target = body.name or name

    def publish(uid: str) -> PretrainedModelSpec:
        return publish_pretrained(objects, prefix, uid, model_name=name)

    return create_pretrained(store, objects, target, namespace, publish, "epoch")


def create_pretrained(
    store: StoreDep,
    objects: ObjectsDep,
    name: str,
    namespace: str,
    write: Any,
    field: str,
) -> PretrainedModel:
    """Create the object, write `pretrained/<uid>/` with `write(uid)`, mark it Succeeded.

    When writing fails, the object and anything under its prefix are removed again.
    """
    from jobs import layout

    if not _valid_name(name):
        raise ApiError(422, f"{name!r} is not a DNS-1123 label", "metadata.name")
    try:
        store.get("PretrainedModel", name, namespace)
        raise AlreadyExists("PretrainedModel", namespace, name)
    except NotFound:
        pass
    meta = ObjectMeta(name=name, namespace=namespace)
    obj = store.create(PretrainedModel(metadata=meta, spec=PretrainedModelSpec()))
    uid = str(obj.metadata.uid)
    try:
        spec = write(uid)
        obj.spec = spec
        obj = store.update(obj)
        obj.status.phase = Phase.SUCCEEDED
        obj.status.progress = 1.0
        obj.status.observed_generation = obj.metadata.generation
        obj.status.message = "published"
        obj = store.update_status(obj)
    except BaseException as error:
        objects.delete_prefix(layout.pretrained_prefix(uid))
        store.remove("PretrainedModel", name, namespace, uid)
        if isinstance(error, ValueError):
            raise inference.refusal(error, field) from None
        raise
    return obj


def _valid_name(name: str) -> bool:
    import re

    return len(name) <= 63 and re.fullmatch(DNS1123_LABEL, name) is not None
