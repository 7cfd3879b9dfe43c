"""/api/v1/pretrained-models: upload, list, get, delete (making one from a model's snapshot is
`POST /api/v1/models/{name}/pretrained`, in routes/inference.py).

Upload (multipart): either `archive` (a kdigits download, tar.gz or zip, checked member by
member before anything is extracted), or loose files as DIGITS' form took them: `weights`
(safetensors, or a state dict loaded with weights_only=True), `network` (a standard network name
or a JSON layer list), `labels` (labels.txt, may be empty), optional `mean` (mean.npy), and the
image type: `channels`, `width`, `height`, `resize_mode`. The object's name is the form field
`name`. Deleting one removes `pretrained/<uid>/` from the object store (the reconciler's
finalizer). While a model that starts from it (`spec.network.pretrained.name`) has not finished
(Pending, Queued or Running), DELETE answers 409 naming those models; once they are Succeeded,
Failed or Aborted (or deleted) it goes. With kubectl, which this route does not see, the object
stays Terminating until they finish (controller.reconciler.pretrained_users).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile

from controller.api import inference
from controller.api.deps import NamespaceDep, ObjectsDep, SettingsDep, StoreDep
from controller.api.errors import ApiError
from controller.api.routes import common
from controller.api.routes.inference import INFERENCE_RESPONSES, create_pretrained
from controller.api.schemas import PretrainedModelList
from controller.reconciler import pretrained_users
from controller.store import Store
from jobs.specs import PretrainedModel, PretrainedModelSpec

router = APIRouter(
    prefix="/api/v1/pretrained-models",
    tags=["pretrained-models"],
    **common.ROUTER_OPTIONS,
)
routes = common.ResourceRoutes(
    router, PretrainedModel, PretrainedModelList, "pretrained_model", "pretrained_models"
)

MAX_TEXT_UPLOAD_BYTES = 16 * 1024 * 1024


@router.post(
    "",
    response_model=PretrainedModel,
    status_code=201,
    response_model_exclude_none=True,
    responses=INFERENCE_RESPONSES,
)
def upload_pretrained_model(
    store: StoreDep,
    objects: ObjectsDep,
    settings: SettingsDep,
    name: Annotated[str, Form(min_length=1, max_length=63, description="metadata.name")],
    archive: Annotated[UploadFile | None, File(description="A kdigits download archive")] = None,
    weights: Annotated[UploadFile | None, File(description="safetensors or a state dict")] = None,
    network: Annotated[
        str | None, Form(max_length=1_000_000, description="A network name or a layer list")
    ] = None,
    labels: Annotated[UploadFile | None, File(description="labels.txt (may be empty)")] = None,
    mean: Annotated[UploadFile | None, File(description="mean.npy")] = None,
    channels: Annotated[int, Form(ge=1, le=3, description="1 or 3")] = 3,
    width: Annotated[int, Form(ge=1, le=4096)] = 256,
    height: Annotated[int, Form(ge=1, le=4096)] = 256,
    resize_mode: Annotated[Literal["squash", "crop", "fill", "half_crop"], Form()] = "squash",
    namespace: NamespaceDep = "default",
) -> Any:
    """Upload a pretrained model as an archive or as loose files."""
    from jobs.archives import (
        DEFAULT_ARCHIVE_LIMITS,
        import_pretrained_archive,
        import_pretrained_files,
    )
    from jobs.specs import ImageSpec, ResizeMode

    limits = DEFAULT_ARCHIVE_LIMITS
    if channels not in (1, 3):
        raise ApiError(422, "1 (grayscale) or 3 (color)", "channels")
    if (archive is None) == (weights is None):
        raise ApiError(422, "give an archive, or weights with network (one of them)", "archive")
    if archive is not None:
        if network or labels is not None or mean is not None:
            raise ApiError(422, "an archive carries its own network, labels and mean", "archive")
        data = inference.read_upload(archive, "archive", limits.max_archive_bytes)
        filename = archive.filename or "archive"

        def write(uid: str) -> PretrainedModelSpec:
            return import_pretrained_archive(
                objects, data, uid, filename=filename, limits=limits,
                allow_custom_python=settings.allow_custom_python,
            )  # fmt: skip

        return create_pretrained(store, objects, name, namespace, write, "archive")
    assert weights is not None
    if not network:
        raise ApiError(422, "a network name or layer list is needed with weights", "network")
    weights_data = inference.read_upload(weights, "weights", limits.max_member_bytes)
    labels_text = inference.read_upload(labels, "labels", MAX_TEXT_UPLOAD_BYTES) if labels else b""
    mean_data = inference.read_upload(mean, "mean", limits.max_member_bytes) if mean else None
    try:
        image = ImageSpec(
            channels=1 if channels == 1 else 3,
            width=width,
            height=height,
            resize_mode=ResizeMode(resize_mode),
        )
    except ValueError as error:
        raise inference.refusal(error, "width") from None
    weights_name = weights.filename or "weights"

    def write_files(uid: str) -> PretrainedModelSpec:
        return import_pretrained_files(
            objects, uid, weights=weights_data, weights_filename=weights_name,
            network=network or "", image=image, labels_text=labels_text, mean=mean_data,
            limits=limits, allow_custom_python=settings.allow_custom_python,
        )  # fmt: skip

    return create_pretrained(store, objects, name, namespace, write_files, "weights")


def _refuse_if_used(store: Store, pretrained: PretrainedModel) -> None:
    """409 while a model that has not finished starts from it (its files are read at start)."""
    name, namespace = pretrained.metadata.name, pretrained.metadata.namespace
    users = pretrained_users(store, name, namespace)
    wait = "wait until they finish, or abort them"
    common.conflict_unless_unused(f'pretrained model "{name}"', users, wait)


read_pretrained_models = routes.list()
read_pretrained_model = routes.read()
delete_pretrained_model = routes.delete(_refuse_if_used)
