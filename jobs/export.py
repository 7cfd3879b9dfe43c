"""Taking a model elsewhere: the download archive, and publishing a snapshot as pretrained.

DIGITS' "Download Model" gave `<model-name>_epoch_<N>.tar.gz` with everything needed to run the
network outside DIGITS. kdigits' archive (tar.gz or zip) holds:
- `model.safetensors`: the weights; `network.json`: how to rebuild the network (jobs.snapshots);
- `labels.txt`; the mean image as `mean.npy` (float32 [H, W, C]) and `mean.png`;
- `model.onnx`: the same network exported with torch.onnx (input `input` float32 [N, C, h, w],
  the prepared pixels; output `logits`), checked with onnx's checker and, when onnxruntime is
  installed, run against torch on a probe batch before it is shipped;
- `info.json`: the Model spec, the dataset's facts, the metrics up to this epoch, the versions;
- `README.md`: how to prepare an image and run the model with onnxruntime or with torch.

`publish_pretrained` copies a snapshot into `pretrained/<id>/` in the snapshot layout (what
jobs.snapshots reads, without the resume state) plus `labels.txt` and `info.json` recording the
image spec (resize mode included), so `--init-from pretrained/<id>/` and inference both read it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import platform
import tarfile
import tempfile
import time
import warnings
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic.alias_generators import to_camel

from jobs import layout
from jobs.events import EVENTS_FILE, parse_jsonl
from jobs.inference import (
    INFO_FILE,
    LABELS_FILE,
    LoadedModel,
    image_spec_of,
    labels_of,
    load_model,
    read_model_files,
)
from jobs.snapshots import MEAN_FILE, MODEL_FILE, NETWORK_FILE, NetworkInfo, decode_info
from jobs.specs import ImageSpec, PretrainedModelSpec, SnapshotRef
from jobs.storage import ObjectNotFound, ObjectStore

ARCHIVE_FORMATS = ("tar.gz", "zip")
ONNX_FILE = "model.onnx"
MEAN_PNG = "mean.png"
README_FILE = "README.md"
ONNX_OPSET = 17
INFO_FORMAT = 1
ONNX_TOLERANCE = 1e-3


class ExportError(ValueError):
    """The snapshot cannot be exported or published; the message says why."""


def archive_name(model_name: str, epoch: float, fmt: str) -> str:
    """DIGITS' download name: `<model-name>_epoch_<N>.tar.gz` (or `.zip`)."""
    if fmt not in ARCHIVE_FORMATS:
        raise ExportError(f"format: {fmt!r} is not one of {', '.join(ARCHIVE_FORMATS)}")
    return f"{model_name}_epoch_{epoch:g}.{fmt}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("kdigits", "torch", "torchvision", "onnx", "onnxruntime", "numpy"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    found.setdefault("kdigits", _source_version())
    return found


def _source_version() -> str:
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError, KeyError):
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])
    return "unknown"


def mean_png(mean: np.ndarray) -> bytes | None:
    """The mean image as a PNG (None for a per-channel mean vector)."""
    array = np.asarray(mean, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3):
        return None
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# --------------------------------------------------------------------------- ONNX


def onnx_bytes(loaded: LoadedModel) -> bytes:
    """The network as ONNX with a dynamic batch axis (TorchScript-based exporter)."""
    info = loaded.info
    network = loaded.network.to("cpu").eval()
    probe = torch.zeros(1, info.channels, info.height, info.width)
    try:
        with tempfile.TemporaryDirectory(prefix="kdigits-onnx-") as folder:
            path = Path(folder) / ONNX_FILE
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    network,
                    (probe,),
                    path,
                    dynamo=False,
                    input_names=["input"],
                    output_names=["logits"],
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                    opset_version=ONNX_OPSET,
                )
            data = path.read_bytes()
    except Exception as error:  # the exporter raises many types for unsupported modules
        raise ExportError(f"ONNX export failed: {error}") from error
    finally:
        loaded.network.to(loaded.device)
    check_onnx(data, loaded)
    return data


def check_onnx(data: bytes, loaded: LoadedModel) -> None:
    """onnx's checker, and when onnxruntime is there, the same logits as torch on a probe."""
    import onnx

    onnx.checker.check_model(onnx.load_from_string(data))
    try:
        import onnxruntime
    except ImportError:
        return
    info = loaded.info
    probe = np.random.default_rng(0).uniform(-128, 128, (2, info.channels, info.height, info.width))
    probe = probe.astype(np.float32)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": probe})[0]
    with torch.inference_mode():
        outputs = loaded.network.to("cpu")(torch.from_numpy(probe))
        loaded.network.to(loaded.device)
    want = (outputs[0] if isinstance(outputs, tuple) else outputs).numpy()
    scale = max(1.0, float(np.abs(want).max()))
    if got.shape != want.shape or float(np.abs(got - want).max()) > ONNX_TOLERANCE * scale:
        raise ExportError("ONNX export check failed: onnxruntime and torch disagree")


# --------------------------------------------------------------------------- info.json


def _json_or_none(store: ObjectStore, key: str) -> Any:
    try:
        return json.loads(store.get_bytes(key))
    except (ObjectNotFound, ValueError):
        return None


def metrics_at(store: ObjectStore, model_id: str, epoch: float | None) -> dict[str, float]:
    """The last value of each metric up to `epoch`, camelCase (`valAccuracy`, `trainLoss`)."""
    try:
        events = parse_jsonl(store.get_bytes(f"{layout.model_prefix(model_id)}{EVENTS_FILE}"))
    except ObjectNotFound:
        return {}
    found: dict[str, float] = {}
    for event in events:
        if event.get("kind") != "metric" or event.get("value") is None:
            continue
        at = event.get("epoch")
        if epoch is not None and isinstance(at, int | float) and at > epoch + 1e-6:
            continue
        found[to_camel(f"{event.get('split', '')}_{event.get('name', '')}")] = event["value"]
    return found


def dataset_facts(store: ObjectStore, dataset_id: str | None) -> dict[str, Any] | None:
    """The training dataset's stats.json (skipped files counted, not listed) and image spec."""
    if not dataset_id:
        return None
    prefix = layout.dataset_prefix(dataset_id)
    stats = _json_or_none(store, f"{prefix}stats.json")
    spec = _json_or_none(store, f"{prefix}spec.json")
    if stats is None and spec is None:
        return None
    facts: dict[str, Any] = {"id": dataset_id}
    if isinstance(stats, dict):
        skipped = stats.get("skipped")
        if isinstance(skipped, dict):
            stats = {**stats, "skipped": {k: v for k, v in skipped.items() if k != "files"}}
        facts["stats"] = stats
    if isinstance(spec, dict):
        facts["image"] = spec.get("image")
        facts["encoding"] = spec.get("encoding")
    return facts


def build_info(
    store: ObjectStore,
    loaded: LoadedModel,
    model_name: str,
    model_id: str | None,
    onnx: dict[str, Any],
) -> dict[str, Any]:
    info = loaded.info
    model_id = model_id or info.model_id
    spec = _json_or_none(store, f"{layout.model_prefix(model_id)}spec.json") if model_id else None
    return {
        "format": INFO_FORMAT,
        "name": model_name,
        "modelId": model_id,
        "epoch": info.epoch,
        "exportedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "spec": spec,
        "network": info.to_json_dict(),
        "image": loaded.image.to_json_dict(),
        "input": {
            "channels": info.channels,
            "height": info.height,
            "width": info.width,
            "cropSize": info.crop_size,
            "meanSubtraction": info.mean_subtraction.value,
            "meanFile": MEAN_FILE if loaded.mean is not None else None,
            "layout": "float32 [N, C, H, W], pixels 0..255 minus the mean",
        },
        "labels": loaded.labels,
        "parameters": loaded.parameters,
        "dataset": dataset_facts(store, info.dataset_id),
        "metrics": metrics_at(store, model_id, info.epoch) if model_id else {},
        "onnx": onnx,
        "versions": versions(),
    }


# --------------------------------------------------------------------------- README


_README_PREPARE = '''import json

import numpy as np
from PIL import Image

ARCHIVE_DIR = "."  # the unpacked archive
IMAGE = "image.png"  # the image to classify

network = json.load(open(f"{ARCHIVE_DIR}/network.json"))
labels = open(f"{ARCHIVE_DIR}/labels.txt").read().splitlines()


def prepare(path):
    """float32 [1, C, h, w]: what the network was trained on (see "Preparing an image")."""
    image = Image.open(path).convert("L" if network["channels"] == 1 else "RGB")
    image = image.resize((network["imageWidth"], network["imageHeight"]), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    mode = network.get("meanSubtraction", "none")
    if mode != "none":
        mean = np.load(f"{ARCHIVE_DIR}/mean.npy", allow_pickle=False).astype(np.float32)
        mean = mean.reshape(pixels.shape) if mean.size == pixels.size else mean
        pixels = pixels - (mean.mean(axis=(0, 1)) if mode == "pixel" else mean)
    crop = network.get("cropSize")
    if crop:
        top = (pixels.shape[0] - crop) // 2
        left = (pixels.shape[1] - crop) // 2
        pixels = pixels[top : top + crop, left : left + crop]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
'''

_README_ONNX = """import onnxruntime

session = onnxruntime.InferenceSession(
    f"{ARCHIVE_DIR}/model.onnx", providers=["CPUExecutionProvider"]
)
probabilities = softmax(session.run(None, {"input": prepare(IMAGE)})[0])[0]
top1 = labels[int(probabilities.argmax())]
print(top1, float(probabilities.max()))
"""

_README_TORCH = """import torch
from safetensors.torch import load_file

from jobs.networks import build_network  # kdigits' network definitions
from jobs.specs import NetworkSpec

model = build_network(
    NetworkSpec.model_validate(network["network"]),
    network["channels"], network["height"], network["width"], network["classes"],
)
model.load_state_dict(load_file(f"{ARCHIVE_DIR}/model.safetensors"))
model.eval()
with torch.inference_mode():
    logits = model(torch.from_numpy(prepare(IMAGE)))
probabilities = torch.softmax(logits, dim=1)[0].numpy()
top1 = labels[int(probabilities.argmax())]
print(top1, float(probabilities.max()))
"""


def readme(info: dict[str, Any], has_onnx: bool) -> str:
    net = info["network"]
    image = info["image"]
    inputs = info["input"]
    name = net["network"].get("standard") or "custom"
    lines = [
        f"# {info['name']}, epoch {info['epoch']:g}"
        if info["epoch"] is not None
        else f"# {info['name']}",
        "",
        f"A `{name}` image classifier for {net['classes']} classes, trained by kdigits "
        f"{info['versions'].get('kdigits', '')} (DIGITS-style) on {image['channels']}-channel "
        f"{image['width']}x{image['height']} images, exported {info['exportedAt']}.",
        "",
        "| file | what it holds |",
        "| --- | --- |",
        "| `model.safetensors` | the weights: the network's state dict, in safetensors |",
        "| `network.json` | how to rebuild the network: definition, input size, crop, mean mode |",
        "| `labels.txt` | the class names, one per line, in output order |",
        "| `mean.npy`, `mean.png` | the mean image subtracted from inputs (float32 [H, W, C]) |",
        "| `model.onnx` | the same network in ONNX: input `input` float32 [N, C, h, w], output "
        "`logits` [N, classes] |",
        "| `info.json` | the model spec, dataset facts, metrics at this epoch, versions |",
        "",
        "## Preparing an image",
        "",
        f"1. Decode it and convert it to {'grayscale (L)' if image['channels'] == 1 else 'RGB'}.",
        f"2. Resize it to {image['width']}x{image['height']} with the dataset's resize mode, "
        f"`{image['resizeMode']}` (squash: plain bilinear resize; crop, fill and half_crop: as "
        "DIGITS did, see kdigits' `jobs/images.py`; the code below squashes).",
        "3. Take the pixels as float32 in 0..255, [H, W, C].",
        f"4. Mean subtraction `{inputs['meanSubtraction']}`: `image` subtracts mean.npy, `pixel` "
        "its per-channel average, `none` nothing.",
        f"5. Centre-crop to {inputs['cropSize']}x{inputs['cropSize']}."
        if inputs["cropSize"]
        else "5. No crop.",
        "6. Transpose to [C, H, W] and add the batch axis. The network scales its input itself.",
        "",
        "Softmax over the outputs gives each class's probability. Shared by both examples:",
        "",
        "```python",
        _README_PREPARE.rstrip(),
        "```",
        "",
    ]
    if has_onnx:
        lines += ["## With onnxruntime", "", "```python", _README_ONNX.rstrip(), "```", ""]
    lines += [
        "## With torch",
        "",
        "The network classes are kdigits' own (`pip install` kdigits, or put its source on",
        "`PYTHONPATH`); only `jobs.networks` and `jobs.specs` are needed, no kdigits service.",
        "",
        "```python",
        _README_TORCH.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the archive


def export_files(
    store: ObjectStore,
    prefix: str,
    model_name: str,
    *,
    model_id: str | None = None,
    with_onnx: bool = True,
    allow_custom_python: bool = False,
) -> dict[str, bytes]:
    """Every file of the download archive, by name."""
    files = read_model_files(store, prefix)
    loaded = load_model(store, prefix, device="cpu", allow_custom_python=allow_custom_python)
    out: dict[str, bytes] = {
        MODEL_FILE: files[MODEL_FILE],
        NETWORK_FILE: files[NETWORK_FILE],
        LABELS_FILE: ("\n".join(loaded.labels) + "\n").encode(),
    }
    if loaded.mean is not None:
        out[MEAN_FILE] = files[MEAN_FILE]
        png = mean_png(loaded.mean)
        if png is not None:
            out[MEAN_PNG] = png
    onnx: dict[str, Any] = {"file": None, "opset": ONNX_OPSET}
    if with_onnx:
        try:
            out[ONNX_FILE] = onnx_bytes(loaded)
            onnx["file"] = ONNX_FILE
        except ExportError as error:
            onnx["error"] = str(error)
    info = build_info(store, loaded, model_name, model_id, onnx)
    out[INFO_FILE] = json.dumps(info, indent=2).encode()
    out[README_FILE] = readme(info, ONNX_FILE in out).encode()
    return out


def write_archive(files: dict[str, bytes], fmt: str, path: Path) -> Path:
    """Write `files` as a flat tar.gz or zip at `path`."""
    if fmt == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path
    if fmt != "tar.gz":
        raise ExportError(f"format: {fmt!r} is not one of {', '.join(ARCHIVE_FORMATS)}")
    now = time.time()
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            member.mtime = int(now)
            member.mode = 0o644
            archive.addfile(member, io.BytesIO(data))
    return path


def export_archive(
    store: ObjectStore,
    prefix: str,
    model_name: str,
    fmt: str = "tar.gz",
    *,
    model_id: str | None = None,
    out_dir: Path | None = None,
    allow_custom_python: bool = False,
) -> Path:
    """The download archive of a snapshot, written to `out_dir` (default: a new temp dir).

    The file is named `<model-name>_epoch_<N>.<fmt>`; the caller removes it when served.
    """
    info = decode_info({NETWORK_FILE: _get(store, f"{prefix}{NETWORK_FILE}")})
    name = archive_name(model_name, info.epoch or 0, fmt)
    files = export_files(
        store, prefix, model_name, model_id=model_id, allow_custom_python=allow_custom_python
    )
    folder = out_dir or Path(tempfile.mkdtemp(prefix="kdigits-export-"))
    return write_archive(files, fmt, folder / name)


def _get(store: ObjectStore, key: str) -> bytes:
    try:
        return store.get_bytes(key)
    except ObjectNotFound:
        raise ExportError(f"{key} does not exist") from None


# --------------------------------------------------------------------------- pretrained


def pretrained_spec(info: NetworkInfo, image: ImageSpec, labels: list[str]) -> PretrainedModelSpec:
    """The PretrainedModel spec describing a pretrained prefix's network, labels and image."""
    network = info.network
    return PretrainedModelSpec(
        network=network.standard,
        layers=network.custom.layers if network.custom is not None else None,
        labels=labels,
        image=image,
    )


def write_pretrained(
    store: ObjectStore,
    pretrained_id: str,
    files: dict[str, bytes],
    info_json: dict[str, Any],
) -> str:
    """Write a pretrained prefix: everything else first, network.json (its marker) last."""
    prefix = layout.pretrained_prefix(pretrained_id)
    if store.list(prefix):
        raise ExportError(f"{prefix} already exists")
    body = {**files, INFO_FILE: json.dumps(info_json, indent=2).encode()}
    try:
        for name in (MODEL_FILE, MEAN_FILE, LABELS_FILE, INFO_FILE):
            if name in body:
                store.put_bytes(f"{prefix}{name}", body[name])
        store.put_bytes(f"{prefix}{NETWORK_FILE}", body[NETWORK_FILE])
    except BaseException:
        with contextlib.suppress(Exception):
            store.delete_prefix(prefix)
        raise
    return prefix


def publish_pretrained(
    store: ObjectStore,
    snapshot_prefix: str,
    pretrained_id: str,
    *,
    model_name: str | None = None,
    labels: list[str] | None = None,
) -> PretrainedModelSpec:
    """Copy a snapshot into `pretrained/<id>/` (the snapshot layout, no resume state).

    Returns the PretrainedModel spec (network, labels, image) for the controller to record.
    """
    try:
        files = read_model_files(store, snapshot_prefix)
    except FileNotFoundError as error:
        raise ExportError(str(error)) from None
    info = decode_info(files)
    names = labels if labels is not None else labels_of(info, files)
    if labels is not None and len(labels) not in (0, info.classes):
        raise ExportError(f"labels: {len(labels)} given, the network has {info.classes} classes")
    image = image_spec_of(store, info, files)
    copied = {k: files[k] for k in (MODEL_FILE, NETWORK_FILE, MEAN_FILE) if k in files}
    copied[LABELS_FILE] = ("\n".join(names) + "\n").encode() if names else b""
    spec = pretrained_spec(info, image, names)
    if info.model_id and info.epoch is not None and model_name:
        spec.from_model = SnapshotRef(model=model_name, epoch=info.epoch)
    info_json = {
        "format": INFO_FORMAT,
        "source": {"snapshot": snapshot_prefix, "modelId": info.model_id, "epoch": info.epoch},
        "image": image.to_json_dict(),
        "labels": names,
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    write_pretrained(store, pretrained_id, copied, info_json)
    return spec
