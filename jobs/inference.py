"""Running a trained model: load a snapshot once, then classify images through it.

DIGITS' "Trained Models" page classified one image or a list with the network of a chosen
epoch. Here `load_model(store, prefix)` reads a snapshot (`models/<id>/snapshots/epoch-N/`) or
a pretrained model (`pretrained/<id>/`) into a `LoadedModel`: the eval-mode network, its labels,
its mean image and the image spec it was trained on. A `LoadedModel` is meant to stay warm
between requests (`ModelCache`). Images go through exactly the dataset and training path:
`jobs.images.decode_image` (format allow-list, size and pixel caps) and `jobs.images.resize`
(DIGITS' resize modes), then `jobs.transforms.BatchTransform.evaluate` (centre crop and mean
subtraction), so a picture is seen the way the training set was.

`visualize()` gives DIGITS' per-layer statistics: for every layer the weights' shape, mean,
std, a 20-bin histogram and the parameter count, and the same for its activations on the image.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from jobs import layout
from jobs.images import DEFAULT_LIMITS, DecodeLimits, ImageRejected, decode_image, resize
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
    k = max(1, min(int(top_k), len(labels)))
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [[labels[int(i)], float(probabilities[int(i)])] for i in order]


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

    @property
    def parameters(self) -> int:
        return count_parameters(self.network)

    def preprocess(self, image_bytes: bytes) -> np.ndarray:
        """uint8 [C, H, W]: decoded and resized exactly as the dataset build stored images."""
        try:
            pixels = decode_image(image_bytes, self.image.channels, self.limits)
        except ImageRejected as rejected:
            raise ImageError(rejected.reason, f"image: {rejected}") from None
        mode = self.image.resize_mode
        noisy = mode in (ResizeMode.FILL, ResizeMode.HALF_CROP)
        rng = np.random.default_rng(FILL_NOISE_SEED) if noisy else _NO_NOISE
        sized = resize(pixels, self.image.width, self.image.height, mode, rng)
        out = np.ascontiguousarray(sized.transpose(2, 0, 1))
        return out if out.flags.writeable else out.copy()

    def preprocess_many(self, images: Sequence[bytes]) -> np.ndarray:
        """uint8 [N, C, H, W] for several encoded images; the first bad one raises ImageError."""
        shape = (len(images), self.image.channels, self.image.height, self.image.width)
        batch = np.empty(shape, dtype=np.uint8)
        for index, data in enumerate(images):
            batch[index] = self.preprocess(data)
        return batch

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        outputs = self.network(self.transform.evaluate(pixels.to(self.device)))
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
        probabilities = self.probabilities(pixels)
        return [top_k_predictions(row, self.labels, top_k) for row in probabilities]

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
