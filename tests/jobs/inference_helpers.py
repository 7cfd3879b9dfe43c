"""Helpers for the inference tests: a real LeNet trained on real MNIST digits, saved as a snapshot.

`trained_lenet` trains DIGITS' LeNet (jobs.networks) with plain torch on 3,000 digits for three
epochs (about 95% accurate on held-out digits), once per test process. `write_trained` lays it
out in a store exactly as the training job does (jobs.snapshots: model.safetensors,
network.json, mean.npy, state.pt under `models/<id>/snapshots/epoch-0002/`), with the Model
spec, a metrics history and the dataset's spec.json, labels.txt and stats.json.
"""

from __future__ import annotations

import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jobs import layout
from jobs.events import make_event, to_jsonl
from jobs.networks import build_network
from jobs.snapshots import NetworkInfo, encode_snapshot, put_snapshot
from jobs.specs import DatasetSpec, MeanSubtraction, ModelSpec, NetworkSpec, ResizeMode
from jobs.storage import ObjectStore

TRAIN_COUNT = 3000
EPOCHS = 3
LABELS = [str(d) for d in range(10)]
ORDER = np.random.default_rng(0).permutation(10000)  # the npz is sorted by class
TRAIN_INDEX = ORDER[:TRAIN_COUNT]
HELD_OUT = ORDER[9000:]  # 1,000 digits never trained on, in random order (all classes)


@dataclass(frozen=True)
class Trained:
    weights: dict[str, torch.Tensor]
    mean: np.ndarray  # float32 [28, 28, 1]
    val_accuracy: float


@functools.lru_cache(maxsize=1)
def _train(images_bytes: bytes, labels_bytes: bytes) -> Trained:
    images = np.frombuffer(images_bytes, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer(labels_bytes, dtype=np.int64)
    assert len(images) == len(ORDER)
    torch.manual_seed(0)
    model = build_network(NetworkSpec(standard="lenet"), 1, 28, 28, 10)
    train_x = torch.from_numpy(images[TRAIN_INDEX]).float()[:, None]
    train_y = torch.from_numpy(labels[TRAIN_INDEX])
    mean = train_x.mean(dim=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(TRAIN_COUNT, generator=gen)
        for start in range(0, TRAIN_COUNT, 64):
            index = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(train_x[index] - mean), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    held_x = torch.from_numpy(images[HELD_OUT]).float()[:, None]
    with torch.no_grad():
        predicted = model(held_x - mean).argmax(1).numpy()
    accuracy = float((predicted == labels[HELD_OUT]).mean())
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    return Trained(weights, mean.numpy().transpose(1, 2, 0).copy(), accuracy)


def trained_lenet(mnist_arrays: tuple[np.ndarray, np.ndarray]) -> Trained:
    images, labels = mnist_arrays
    return _train(
        np.ascontiguousarray(images, dtype=np.uint8).tobytes(),
        np.ascontiguousarray(labels, dtype=np.int64).tobytes(),
    )


def network_info(model_id: str, dataset_id: str, epoch: float) -> NetworkInfo:
    return NetworkInfo(
        network=NetworkSpec(standard="lenet"),
        channels=1,
        height=28,
        width=28,
        image_height=28,
        image_width=28,
        classes=10,
        labels=LABELS,
        mean_subtraction=MeanSubtraction.IMAGE,
        epoch=epoch,
        model_id=model_id,
        dataset_id=dataset_id,
    )


def write_trained(
    store: ObjectStore,
    trained: Trained,
    model_id: str = "m1",
    dataset_id: str = "d1",
    epochs: tuple[float, ...] = (1.0, 2.0),
    resize_mode: ResizeMode = ResizeMode.SQUASH,
) -> str:
    """Snapshots at `epochs` (same weights), spec, events and dataset files; the last prefix."""
    prefix = ""
    for epoch in epochs:
        info = network_info(model_id, dataset_id, epoch)
        files = encode_snapshot(trained.weights, info, {"epoch": epoch}, trained.mean)
        prefix = layout.snapshot_prefix(model_id, epoch)
        put_snapshot(store, prefix, files)
    spec = ModelSpec.model_validate(
        {"dataset": "digits", "network": {"standard": "lenet"}, "training": {"epochs": 2}}
    )
    store.put_bytes(
        f"{layout.model_prefix(model_id)}spec.json", json.dumps(spec.to_json_dict()).encode()
    )
    events = []
    for epoch in epochs:
        events.append(
            make_event("metric", name="loss", split="train", value=0.5 / epoch, epoch=epoch)
        )
        events.append(
            make_event(
                "metric",
                name="accuracy",
                split="val",
                value=trained.val_accuracy - 0.1 / epoch,
                epoch=epoch,
            )
        )
    store.put_bytes(f"{layout.model_prefix(model_id)}events.jsonl", to_jsonl(events))
    dataset = DatasetSpec.model_validate(
        {
            "source": {"folder": {"train": "/data/mnist/train"}},
            "image": {"channels": 1, "width": 28, "height": 28, "resizeMode": resize_mode.value},
        }
    )
    dprefix = layout.dataset_prefix(dataset_id)
    store.put_bytes(f"{dprefix}spec.json", json.dumps(dataset.to_json_dict()).encode())
    store.put_bytes(f"{dprefix}labels.txt", ("\n".join(LABELS) + "\n").encode())
    stats = {"complete": True, "images": {"train": 3000, "val": 1000}, "classes": 10,
             "skipped": {"count": 0, "reasons": {}, "files": []}}  # fmt: skip
    store.put_bytes(f"{dprefix}stats.json", json.dumps(stats).encode())
    return prefix


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[tuple[Path, int]]:
    """One PNG per image under `folder/<label>/`; returns (path, label) in order."""
    written = []
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / str(int(label)) / f"{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(pixels))
        written.append((path, int(label)))
    return written


def reference_probabilities(trained: Trained, images: np.ndarray) -> np.ndarray:
    """Plain torch: the LeNet forward on raw uint8 [N, 28, 28] pixels minus the mean."""
    model = build_network(NetworkSpec(standard="lenet"), 1, 28, 28, 10)
    model.load_state_dict(trained.weights)
    model.eval()
    x = torch.from_numpy(images.copy()).float()[:, None]
    mean = torch.from_numpy(trained.mean.transpose(2, 0, 1).copy())
    with torch.no_grad():
        return torch.softmax(model(x - mean), dim=1).numpy()
