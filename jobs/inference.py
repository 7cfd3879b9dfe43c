"""Running a trained model: load a snapshot once, then classify images through it.

DIGITS' "Trained Models" page classified one image or a list with the network of a chosen
epoch. Here `load_model(store, prefix)` reads a snapshot (`models/<id>/snapshots/epoch-N/`) or
a pretrained model (`pretrained/<id>/`) into a `LoadedModel`: the eval-mode network, its labels,
its mean image and the image spec it was trained on. A `LoadedModel` is meant to stay warm
between requests (`ModelCache`). Images go through exactly the dataset and training path:
`jobs.images.decode_image` (format allow-list, size and pixel caps) and `jobs.images.resize`
(DIGITS' resize modes), then `jobs.transforms.BatchTransform.evaluate` (centre crop and mean
subtraction), so a picture is seen the way the training set was.

One shortcut, for speed: a PNG that already stores exactly the model's samples (8-bit grey for
a one-channel model, 8-bit RGB for a colour one, not interlaced) and whose chunks all check out
(structure and CRCs) is decoded by libpng through torchvision, in C, at under half the cost of
PIL's mostly-Python PNG reader. PNG is lossless and neither reader applies gamma or colour
profiles, so the pixels are the same ones decode_image gives (tests compare them); any other
file, and any file that path fails on, goes through decode_image and gets its refusals.

`visualize()` gives DIGITS' per-layer statistics: for every layer the weights' shape, mean,
std, a 20-bin histogram and the parameter count, and the same for its activations on the image.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from jobs import layout
from jobs.images import DEFAULT_LIMITS, DecodeLimits, ImageRejected, decode_image, resize
from jobs.networks import adopt_channels_last
from jobs.snapshots import (
    MEAN_FILE,
    MODEL_FILE,
    NETWORK_FILE,
    NetworkInfo,
    decode_info,
    decode_mean,
    list_snapshots,
)
from jobs.snapshots import load_model as build_snapshot_model
from jobs.specs import DatasetSpec, ImageSpec, MeanSubtraction, ResizeMode, TransformSpec
from jobs.storage import ObjectNotFound, ObjectStore
from jobs.transforms import BatchTransform, mean_tensor

LABELS_FILE = "labels.txt"
INFO_FILE = "info.json"
DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 256
HISTOGRAM_BINS = 20  # DIGITS' get_layer_statistics
FILL_NOISE_SEED = 0  # fill / half_crop padding noise: fixed, so one image always scores alike
_NO_NOISE = np.random.default_rng(FILL_NOISE_SEED)  # never drawn from: squash and crop add none

CHANNELS_LAST_RTOL = 1e-4  # probabilities may differ by rounding only, between the two layouts
CHANNELS_LAST_ATOL = 1e-6

SMALL_BATCH = 8
"""Batches up to this size run on one CPU thread: thread start-up and spinning cost more than
they save on a handful of images, and a lot more on a busy machine (classify-one latency)."""
_THREADS_LOCK = threading.Lock()

Prediction = list[list[Any]]
"""One image's answer, DIGITS' shape: [[label, probability], ...], most probable first."""


@contextlib.contextmanager
def _cpu_threads(count: int | None) -> Iterator[None]:
    """Run the block with `count` torch intra-op threads (None: leave the setting alone)."""
    if count is None:
        yield
        return
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(count)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_TYPES = {1: 0, 3: 2}  # model channels -> the PNG colour type with those samples
_PNG_CHUNK = struct.Struct(">I4s")
_PNG_HEADER = struct.Struct(">IIBBBBB")
_PNG_CRC = struct.Struct(">I")
_PNG_UNCHANGED = 0  # torchvision.io.ImageReadMode.UNCHANGED: the samples as stored


def plain_png_size(data: bytes, channels: int, limits: DecodeLimits) -> tuple[int, int] | None:
    """(height, width) of a PNG that stores exactly `channels` 8-bit samples, else None.

    None unless: the size caps hold (bytes, then width x height from the header, before any
    pixel is decoded); IHDR comes first and says 8-bit grey (1 channel) or RGB (3), not
    interlaced; every chunk up to IEND is complete with a correct CRC; and the only critical
    chunks are IHDR, IDAT and IEND. Anything else is left to decode_image.
    """
    colour = _PNG_COLOUR_TYPES.get(channels)
    if colour is None or len(data) > limits.max_bytes or not data.startswith(PNG_SIGNATURE):
        return None
    view = memoryview(data)
    offset, size, seen_data = len(PNG_SIGNATURE), None, False
    while offset + 12 <= len(data):
        length, kind = _PNG_CHUNK.unpack_from(data, offset)
        end = offset + 8 + length
        if (
            end + 4 > len(data)
            or zlib.crc32(view[offset + 4 : end]) != _PNG_CRC.unpack_from(data, end)[0]
        ):
            return None
        if size is None:
            if kind != b"IHDR" or length != _PNG_HEADER.size:
                return None
            width, height, depth, found, method, filtering, interlace = _PNG_HEADER.unpack_from(
                data, offset + 8
            )
            plain = depth == 8 and found == colour and not (method or filtering or interlace)
            if not plain or not 0 < width * height <= limits.max_pixels:
                return None
            size = (height, width)
        elif kind == b"IEND":
            return size if seen_data else None
        elif kind == b"IDAT":
            seen_data = True
        elif kind[0] & 0x20 == 0:  # another critical chunk (PLTE, a second IHDR...)
            return None
        offset = end + 4
    return None


@functools.cache
def png_decoder() -> Callable[[bytes], torch.Tensor] | None:
    """libpng through torchvision's image op (bytes -> uint8 [C, H, W]), or None.

    torchvision 0.29 deprecated its image codecs in favour of TorchCodec, and its Python
    wrapper warns on every call; the op underneath is called directly instead, after checking
    once that it decodes a known PNG exactly. Where a torchvision release drops or changes it,
    this returns None and PIL decodes everything, as before.
    """
    try:
        import torchvision.io  # noqa: F401 - registers torch.ops.image

        def decode(data: bytes) -> torch.Tensor:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            return torch.ops.image.decode_png(encoded, _PNG_UNCHANGED, False)

        expected = np.arange(6, dtype=np.uint8).reshape(2, 3) * 40
        probe = io.BytesIO()
        Image.fromarray(expected).save(probe, format="PNG")
        if not np.array_equal(decode(probe.getvalue()).numpy(), expected[None]):
            return None
    except Exception:  # no torchvision image op, or another one: PIL decodes everything
        return None
    return decode


def decode_plain_png(data: bytes, channels: int, limits: DecodeLimits) -> np.ndarray | None:
    """uint8 [H, W, C] of a PNG `plain_png_size` accepts, decoded by libpng; else None."""
    size = plain_png_size(data, channels, limits)
    decode = png_decoder()
    if size is None or decode is None:
        return None
    try:
        decoded = decode(data)
    except RuntimeError:  # libpng refused it: decode_image words the reason
        return None
    if tuple(decoded.shape) != (channels, *size) or decoded.dtype != torch.uint8:
        return None
    return np.ascontiguousarray(decoded.numpy().transpose(1, 2, 0))


class ImageError(ValueError):
    """An image cannot be classified; `reason` is one of jobs.images' REASON_* strings."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SnapshotNotFound(LookupError):
    """The model has no (complete) snapshot for the requested epoch."""


def resolve_snapshot(store: ObjectStore, model_id: str, epoch: float | None = None) -> str:
    """The prefix of a model's snapshot at `epoch` (default: the last one)."""
    snapshots = list_snapshots(store, model_id)
    if not snapshots:
        raise SnapshotNotFound(f"epoch: model {model_id} has no complete snapshot yet")
    if epoch is None:
        return snapshots[-1][1]
    for found, prefix in snapshots:
        if abs(found - epoch) < 1e-6:
            return prefix
    available = ", ".join(f"{e:g}" for e, _ in snapshots)
    raise SnapshotNotFound(f"epoch: no snapshot at epoch {epoch:g} (snapshots: {available})")


def _optional(store: ObjectStore, key: str) -> bytes | None:
    try:
        return store.get_bytes(key)
    except ObjectNotFound:
        return None


def read_model_files(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    """The files inference needs from a snapshot or pretrained prefix (never state.pt)."""
    files: dict[str, bytes] = {}
    for name in (MODEL_FILE, NETWORK_FILE, MEAN_FILE, LABELS_FILE, INFO_FILE):
        data = _optional(store, f"{prefix}{name}")
        if data is not None:
            files[name] = data
    if MODEL_FILE not in files or NETWORK_FILE not in files:
        raise FileNotFoundError(
            f"{prefix} is not a snapshot or pretrained model (needs {MODEL_FILE}, {NETWORK_FILE})"
        )
    return files


def labels_of(info: NetworkInfo, files: dict[str, bytes]) -> list[str]:
    """Class names: network.json's, else labels.txt's, else the class indices as text."""
    if len(info.labels) == info.classes:
        return list(info.labels)
    if LABELS_FILE in files:
        lines = [line.strip() for line in files[LABELS_FILE].decode("utf-8").splitlines()]
        names = [line for line in lines if line]
        if len(names) == info.classes:
            return names
    return [str(index) for index in range(info.classes)]


def image_spec_of(store: ObjectStore, info: NetworkInfo, files: dict[str, bytes]) -> ImageSpec:
    """The stored image type, size and resize mode the model was trained with.

    Channels and size come from network.json. The resize mode is the one in the prefix's
    info.json (pretrained models and uploads), else network.json's own `resizeMode` when it
    records one, else the training dataset's spec.json, else DIGITS' default, squash.
    """
    mode: ResizeMode | None = None
    if INFO_FILE in files:
        recorded = json.loads(files[INFO_FILE]).get("image", {}).get("resizeMode")
        mode = ResizeMode(recorded) if recorded else None
    own_mode = getattr(info, "resize_mode", None)
    if mode is None and own_mode is not None:
        mode = ResizeMode(own_mode)
    if mode is None and info.dataset_id:
        spec = _optional(store, f"{layout.dataset_prefix(info.dataset_id)}spec.json")
        if spec is not None:
            mode = DatasetSpec.model_validate_json(spec).image.resize_mode
    return ImageSpec(
        channels=1 if info.channels == 1 else 3,
        width=info.image_width,
        height=info.image_height,
        resize_mode=mode or ResizeMode.SQUASH,
    )


def _histogram(values: np.ndarray) -> dict[str, list[float]]:
    """DIGITS' histogram: counts, bin centres, and ticks at the first, middle and last edge."""
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
    centres = (edges[:-1] + edges[1:]) / 2
    ticks = edges[[0, len(edges) // 2, -1]]
    return {
        "counts": [int(c) for c in counts],
        "centers": [float(c) for c in centres],
        "ticks": [float(t) for t in ticks],
    }


def tensor_statistics(tensor: torch.Tensor) -> dict[str, Any]:
    """Shape, mean, std and histogram of a tensor, as DIGITS showed them per layer."""
    values = tensor.detach().to("cpu", torch.float32).numpy().ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        finite = np.zeros(1, dtype=np.float32)
    return {
        "shape": [int(s) for s in tensor.shape],
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "histogram": _histogram(finite),
    }


def count_parameters(module: nn.Module) -> int:
    return sum(int(p.numel()) for p in module.parameters())


def top_k_predictions(probabilities: np.ndarray, labels: Sequence[str], top_k: int) -> Prediction:
    """[[label, probability], ...] for one image's class probabilities, most probable first."""
    return top_k_many(probabilities[None], labels, top_k)[0]


def top_k_many(probabilities: np.ndarray, labels: Sequence[str], top_k: int) -> list[Prediction]:
    """`top_k_predictions` of every row of float [N, classes], sorted in one numpy call.

    The same answer as row by row (a stable sort, ties in class order), without the per-row
    argsort and per-value float() that dominated answering for thousands of images.
    """
    k = max(1, min(int(top_k), len(labels)))
    if len(probabilities) == 0:
        return []
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(probabilities, order, axis=1).tolist()
    names = np.asarray(labels, dtype=object)[order].tolist()
    return [
        [[name, value] for name, value in zip(row_names, row_values, strict=True)]
        for row_names, row_values in zip(names, values, strict=True)
    ]


@dataclass
class LoadedModel:
    """An eval-mode network with what it needs to classify raw image bytes."""

    network: nn.Module
    info: NetworkInfo
    labels: list[str]
    mean: np.ndarray | None
    image: ImageSpec
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prefix: str = ""
    limits: DecodeLimits = DEFAULT_LIMITS
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        info = self.info
        self.network = self.network.to(self.device).eval()
        mean = mean_tensor(
            self.mean, info.mean_subtraction, info.channels, info.image_height, info.image_width
        )
        self.transform = BatchTransform(
            TransformSpec(mean_subtraction=info.mean_subtraction),
            mean,
            info.channels,
            info.image_height,
            info.image_width,
            info.crop_size,
            self.device,
        )
        self._lock = threading.Lock()
        png_decoder()  # imports torchvision now rather than in the first request
        self.channels_last = self.device.type == "cpu" and self._adopt_channels_last()

    def _adopt_channels_last(self) -> bool:
        """Classify in channels-last layout when two fixed probe images score the same both
        ways (`adopt_channels_last`); the weights change layout outside inference mode, so
        they stay usable by autograd (ONNX export)."""
        noise = np.random.default_rng(FILL_NOISE_SEED).integers(0, 256, (2, *self.pixel_shape))
        probe = torch.from_numpy(noise.astype(np.uint8))

        def run(channels_last: bool) -> torch.Tensor:
            self.channels_last = channels_last
            with _cpu_threads(1), torch.inference_mode():
                return self._forward(probe)

        return adopt_channels_last(self.network, run, CHANNELS_LAST_RTOL, CHANNELS_LAST_ATOL)

    @property
    def parameters(self) -> int:
        return count_parameters(self.network)

    @property
    def pixel_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed image."""
        return (self.image.channels, self.image.height, self.image.width)

    def preprocess_into(self, image_bytes: bytes, out: np.ndarray) -> None:
        """Decode and resize one image straight into `out`, a uint8 [C, H, W] slot of a batch.

        The dataset build's path (decode_image, or libpng for a plain PNG: the same pixels,
        then DIGITS' resize); the [H, W, C] pixels land transposed in the batch in one copy.
        """
        pixels = decode_plain_png(image_bytes, self.image.channels, self.limits)
        if pixels is None:
            try:
                pixels = decode_image(image_bytes, self.image.channels, self.limits)
            except ImageRejected as rejected:
                raise ImageError(rejected.reason, f"image: {rejected}") from None
        mode = self.image.resize_mode
        noisy = mode in (ResizeMode.FILL, ResizeMode.HALF_CROP)
        rng = np.random.default_rng(FILL_NOISE_SEED) if noisy else _NO_NOISE
        sized = resize(pixels, self.image.width, self.image.height, mode, rng)
        out[...] = sized.transpose(2, 0, 1)

    def preprocess(self, image_bytes: bytes) -> np.ndarray:
        """uint8 [C, H, W]: decoded and resized exactly as the dataset build stored images."""
        out = np.empty(self.pixel_shape, dtype=np.uint8)
        self.preprocess_into(image_bytes, out)
        return out

    def preprocess_many(self, images: Sequence[bytes]) -> np.ndarray:
        """uint8 [N, C, H, W] for several encoded images; the first bad one raises ImageError."""
        batch = np.empty((len(images), *self.pixel_shape), dtype=np.uint8)
        for index, data in enumerate(images):
            self.preprocess_into(data, batch[index])
        return batch

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixels = pixels.to(self.device)
        if self.channels_last:  # uint8, so the float copy and the mean subtraction follow it
            pixels = torch.empty_like(pixels, memory_format=torch.channels_last).copy_(pixels)
        outputs = self.network(self.transform.evaluate(pixels))
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        return torch.softmax(logits.float(), dim=1)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities float32 [N, classes] of uint8 [N, C, H, W] pixels, batched."""
        if pixels.ndim != 4 or pixels.shape[1:] != (
            self.image.channels,
            self.image.height,
            self.image.width,
        ):
            raise ValueError(
                f"expected uint8 [N, {self.image.channels}, {self.image.height}, "
                f"{self.image.width}] pixels, got {list(pixels.shape)}"
            )
        out = np.empty((len(pixels), self.info.classes), dtype=np.float32)
        source = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.uint8))
        threads = 1 if self.device.type == "cpu" and len(pixels) <= SMALL_BATCH else None
        with self._lock, _cpu_threads(threads), torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                chunk = source[start : start + self.batch_size]
                out[start : start + len(chunk)] = self._forward(chunk).cpu().numpy()
        return out

    def classify_pixels(self, pixels: np.ndarray, top_k: int = DEFAULT_TOP_K) -> list[Prediction]:
        return top_k_many(self.probabilities(pixels), self.labels, top_k)

    def classify(self, images: Sequence[bytes], top_k: int = DEFAULT_TOP_K) -> list[Prediction]:
        """Per image, its top-k [[label, probability], ...]; raises ImageError on a bad one."""
        return self.classify_pixels(self.preprocess_many(images), top_k)

    def classify_one(self, image_bytes: bytes, top_k: int = DEFAULT_TOP_K) -> Prediction:
        return self.classify([image_bytes], top_k)[0]

    def visualize(self, image_bytes: bytes, top_k: int = DEFAULT_TOP_K) -> dict[str, Any]:
        """The prediction plus DIGITS' per-layer weight and activation statistics."""
        pixels = torch.from_numpy(self.preprocess(image_bytes)[None])
        layers: list[dict[str, Any]] = []
        hooks = []

        def record(name: str, module: nn.Module) -> Any:
            def hook(_: nn.Module, __: Any, output: Any) -> None:
                tensor = output[0] if isinstance(output, tuple) else output
                if not isinstance(tensor, torch.Tensor):
                    return
                entry: dict[str, Any] = {
                    "name": name,
                    "type": type(module).__name__,
                    "activations": tensor_statistics(tensor),
                    "weights": None,
                }
                own = list(module.parameters(recurse=False))
                if own:
                    weight = getattr(module, "weight", None)
                    shown = weight if isinstance(weight, torch.Tensor) else own[0]
                    entry["weights"] = {
                        **tensor_statistics(shown),
                        "parameters": sum(int(p.numel()) for p in own),
                    }
                layers.append(entry)

            return hook

        for name, module in self.network.named_modules():
            if name and not any(True for _ in module.children()):
                hooks.append(module.register_forward_hook(record(name, module)))
        try:
            threads = 1 if self.device.type == "cpu" else None
            with self._lock, _cpu_threads(threads), torch.inference_mode():
                probabilities = self._forward(pixels).cpu().numpy()[0]
        finally:
            for handle in hooks:
                handle.remove()
        return {
            "predictions": top_k_predictions(probabilities, self.labels, top_k),
            "layers": layers,
            "totalParameters": self.parameters,
        }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    store: ObjectStore,
    prefix: str,
    *,
    device: torch.device | str | None = None,
    allow_custom_python: bool = False,
    limits: DecodeLimits = DEFAULT_LIMITS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> LoadedModel:
    """A snapshot or pretrained prefix as a warm, eval-mode LoadedModel."""
    files = read_model_files(store, prefix)
    network, info = build_snapshot_model(files, allow_custom_python)
    mean = decode_mean(files) if info.mean_subtraction != MeanSubtraction.NONE else None
    return LoadedModel(
        network=network,
        info=info,
        labels=labels_of(info, files),
        mean=mean,
        image=image_spec_of(store, info, files),
        device=torch.device(device) if device is not None else default_device(),
        prefix=prefix,
        limits=limits,
        batch_size=batch_size,
    )


def info_of(store: ObjectStore, prefix: str) -> NetworkInfo:
    """network.json of a prefix, without loading the weights."""
    return decode_info({NETWORK_FILE: store.get_bytes(f"{prefix}{NETWORK_FILE}")})


class ModelCache:
    """Keeps the most recently used models warm, keyed by (store URL, prefix)."""

    def __init__(self, capacity: int = 4, **load_options: Any) -> None:
        self.capacity = max(1, capacity)
        self._options = load_options
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: ObjectStore, prefix: str) -> LoadedModel:
        key = (getattr(store, "url", repr(store)), prefix)
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
            model = load_model(store, prefix, **self._options)
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return model

    def evict(self, prefix_start: str = "") -> None:
        """Drop cached models whose prefix starts with `prefix_start` (all by default)."""
        with self._lock:
            for key in [k for k in self._models if k[1].startswith(prefix_start)]:
                del self._models[key]

    def __len__(self) -> int:
        return len(self._models)


class InferenceService:
    """Models held warm in one long-lived process, for classify-one requests.

    Plain Python, so the controller can use it in-process or run it on a Ray worker as an
    actor (`ray.remote(num_gpus=1)(InferenceService).remote(store_url)`: the GPU is then used
    because `default_device()` sees it). Arguments and answers are plain bytes and JSON.
    """

    def __init__(self, store_url: str, capacity: int = 4, device: str | None = None) -> None:
        from jobs.storage import open_store

        self.store = open_store(store_url)
        self.cache = ModelCache(capacity, device=device)

    def classify(
        self, prefix: str, images: list[bytes], top_k: int = DEFAULT_TOP_K
    ) -> list[Prediction]:
        return self.cache.get(self.store, prefix).classify(images, top_k)

    def visualize(self, prefix: str, image: bytes, top_k: int = DEFAULT_TOP_K) -> dict[str, Any]:
        return self.cache.get(self.store, prefix).visualize(image, top_k)

    def device(self) -> str:
        return str(default_device())


def encode_npy(array: np.ndarray) -> bytes:
    """An .npy body for a float32 array (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()
