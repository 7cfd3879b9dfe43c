"""What the inference routes share: the warm model cache, snapshot lookup, uploads, refusals.

The jobs/ inference modules import torch (and the export path onnx), so they are imported on
first use, not when the app is built: `kdigits serve` starts as fast as before and a server that
never classifies never loads them.

Refusals: every ValueError the data plane raises for bad input (ImageError, ImageListError,
PathNotAllowed, FetchError, ArchiveRejected, ExportError) becomes a 4xx with `field` and
`reason`: 403 for a path outside the data roots or a URL host that is not allowed, 413 for an
upload over its size cap, 422 for the rest. SnapshotNotFound is 404, except that a model that
has not succeeded and has no snapshot yet is 409.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import Request, UploadFile

from controller.api.errors import ApiError
from controller.ray_backend import RayUnavailable
from controller.services import Services
from controller.settings import Settings
from jobs import layout
from jobs.specs import Model, Phase
from jobs.storage import ObjectStore

if TYPE_CHECKING:
    from jobs.inference import LoadedModel, ModelCache

CACHE_CAPACITY = 4
UPLOAD_CHUNK = 1 << 20
MAX_IMAGE_UPLOAD_BYTES = 64 * 1024 * 1024  # jobs.images.DecodeLimits.max_bytes
MAX_LIST_UPLOAD_BYTES = 256 * 1024 * 1024  # jobs.evaluation.MAX_LIST_BYTES
MAX_FILES_UPLOAD = 1000

FIELDS = frozenset(
    {
        "image_file", "image_files", "image_path", "image_url", "image_list", "image_folder",
        "epoch", "top_k", "top_n", "format", "archive", "weights", "network", "labels", "mean",
        "channels", "width", "height", "resize_mode", "name",
    }
)  # fmt: skip
FIELD_PREFIX = re.compile(r"^(?P<field>[a-z_]+)(?P<rest>(?: line \d+)?: .*)$", re.DOTALL)
HOST_REFUSED = ("is not an allowed host", "no hosts are allowed", "only http and https")

_CACHE_LOCK = threading.Lock()


def model_cache(request: Request, settings: Settings) -> ModelCache:
    """The app's one ModelCache: the most recently used models stay loaded between requests."""
    state = request.app.state
    cache = getattr(state, "model_cache", None)
    if cache is None:
        with _CACHE_LOCK:
            cache = getattr(state, "model_cache", None)
            if cache is None:
                from jobs.inference import ModelCache

                cache = ModelCache(CACHE_CAPACITY, allow_custom_python=settings.allow_custom_python)
                state.model_cache = cache
    return cache


def snapshot_prefix(objects: ObjectStore, model: Model, epoch: float | None) -> str:
    """The model's snapshot at `epoch` (default: the last); 404, or 409 while it has none."""
    from jobs.inference import SnapshotNotFound, resolve_snapshot

    try:
        return resolve_snapshot(objects, str(model.metadata.uid), epoch)
    except SnapshotNotFound as error:
        phase = model.status.phase
        if phase != Phase.SUCCEEDED and not model.status.snapshots:
            raise ApiError(
                409,
                f'model "{model.metadata.name}" is {phase.value} and has no snapshot yet',
                "epoch",
            ) from None
        raise ApiError(404, _strip(str(error), "epoch"), "epoch") from None


def load(request: Request, settings: Settings, objects: ObjectStore, prefix: str) -> LoadedModel:
    try:
        return model_cache(request, settings).get(objects, prefix)
    except (FileNotFoundError, ValueError) as error:
        raise ApiError(409, f"the snapshot at {prefix} cannot be loaded: {error}") from None


def refusal(error: Exception, field: str) -> ApiError:
    """A data-plane ValueError as an ApiError naming the field and the reason."""
    from jobs.paths import PathNotAllowed

    message = str(error) or type(error).__name__
    reason = message
    match = FIELD_PREFIX.match(message)
    if match and match.group("field") in FIELDS | {"image"}:
        if match.group("field") != "image":  # ImageError says "image: ..." of any source
            field = match.group("field")
        reason = match.group("rest").lstrip(": ").strip()
    host_refused = any(text in message for text in HOST_REFUSED)
    if isinstance(error, PathNotAllowed) or host_refused:
        return ApiError(403, f"{field}: {reason}", field)
    return ApiError(422, reason, field)


def _strip(message: str, field: str) -> str:
    prefix = f"{field}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def read_upload(upload: UploadFile, field: str, limit: int) -> bytes:
    """The whole upload, refused (413) once it is longer than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    upload.file.seek(0)
    while True:
        chunk = upload.file.read(UPLOAD_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"{field}: the upload is larger than {limit} bytes", field)
        chunks.append(chunk)
    return b"".join(chunks)


def read_text(upload: UploadFile, field: str, limit: int) -> str:
    data = read_upload(upload, field, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(422, "not UTF-8 text", field) from None


def upload_name(upload: UploadFile, index: int) -> str:
    return upload.filename or f"upload-{index}"


# --------------------------------------------------------------------------- long lists on Ray

CLASSIFY_JOB_TIMEOUT_S = 3600.0
CLASSIFY_JOB_POLL_S = 0.5


def run_classify_job(
    services: Services,
    model: Model,
    prefix: str,
    text: str,
    *,
    folder: str | None,
    top_k: int,
    top_n: int = 0,
) -> dict[str, Any]:
    """Run jobs.classify_job on Ray over an image list and wait for its JSON answer.

    The list goes into the object store under `models/<uid>/classify/<token>/`, the job is
    submitted through the controller's Ray backend as `kdigits-classify-<uid>-<token>`, and the
    answer is read back once it succeeds; the job and its keys are removed afterwards.
    """
    settings, objects, backend = services.settings, services.objects, services.backend
    uid = str(model.metadata.uid)
    token = uuid.uuid4().hex[:12]
    work = f"{layout.model_prefix(uid)}classify/{token}/"
    list_key, out_key = f"{work}list.txt", f"{work}result.json"
    args = [
        settings.job_python or "python", "-m", "jobs.classify_job",
        "--store", settings.object_store_url, "--model-id", uid, "--snapshot", prefix,
        "--list", list_key, "--out", out_key, "--top-k", str(top_k), "--top-n", str(top_n),
        "--data-roots", ":".join(str(p) for p in settings.data_root_paths),
        "--allowed-hosts", ",".join(settings.url_hosts),
    ]  # fmt: skip
    if folder:
        args += ["--folder", folder]
    sid = f"kdigits-classify-{uid}-{token}"
    objects.put_bytes(list_key, text.encode("utf-8"))
    try:
        try:
            gpus = 1.0 if backend.resources().total.get("GPU", 0) > 0 else 0.0
            backend.submit(
                sid,
                shlex.join(args),
                num_gpus=gpus,
                metadata={"kdigits.kind": "classify", "kdigits.name": model.metadata.name},
            )
        except RayUnavailable as error:
            raise ApiError(503, f"cannot run the classify job on Ray: {error}") from None
        deadline = time.monotonic() + CLASSIFY_JOB_TIMEOUT_S
        while True:
            info = backend.info(sid)
            if info is not None and info.terminal:
                break
            if time.monotonic() > deadline:
                backend.stop(sid)
                raise ApiError(504, f"classify job {sid} did not finish in time")
            time.sleep(CLASSIFY_JOB_POLL_S)
        if info.status != "SUCCEEDED":
            tail = backend.logs(sid)[0].strip().splitlines()[-3:]
            detail = " / ".join(tail) or info.message
            raise ApiError(502, f"classify job {sid} {info.status.lower()}: {detail}")
        return json.loads(objects.get_bytes(out_key))
    finally:
        with contextlib.suppress(Exception):
            backend.delete(sid)
        with contextlib.suppress(Exception):
            objects.delete_prefix(work)
