"""Reading a built dataset from the object store into a fast training input pipeline.

`read_dataset_info` reads what the training job needs before spending compute: labels.txt, the
image shape and counts from the shard headers (jobs.shards), and checks that stats.json exists
(a dataset without it is not complete). Small datasets are decoded once into uint8 arrays
[N, C, H, W] and held in memory (on the GPU when there is one), batches being index gathers;
large ones are streamed shard by shard with the next shard prefetched in a thread.

Distribution over data-parallel workers mirrors torch's DistributedSampler: every rank draws
the same per-epoch permutation from (seed, epoch), pads it to a multiple of the world size and
takes every world-th index from its rank, so all ranks run the same number of batches and the
union of the ranks' i-th batches is the single-worker i-th batch.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from jobs import layout
from jobs.shards import read_shard
from jobs.storage import ObjectNotFound, ObjectStore

IN_MEMORY_MAX_BYTES = int(os.environ.get("KDIGITS_TRAIN_IN_MEMORY_BYTES", str(4 << 30)))
"""Datasets up to this many raw pixel bytes (all splits) are held in memory; larger: streamed."""


class DatasetError(ValueError):
    """The dataset is missing, incomplete, or unusable for training."""


@dataclass(frozen=True)
class SplitInfo:
    keys: list[str]
    counts: list[int]

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class DatasetInfo:
    dataset_id: str
    labels: list[str]
    channels: int
    height: int
    width: int
    splits: dict[str, SplitInfo] = field(default_factory=dict)

    def count(self, split: str) -> int:
        info = self.splits.get(split)
        return info.count if info is not None else 0

    @property
    def raw_bytes(self) -> int:
        pixels = self.channels * self.height * self.width
        return sum(s.count for s in self.splits.values()) * pixels


def read_shard_metadata(store: ObjectStore, key: str) -> dict[str, str]:
    """The safetensors header metadata of a shard, reading only as far as the header."""
    buffer = b""
    needed = 8
    for chunk in store.iter_chunks(key, chunk_size=1 << 16):
        buffer += chunk
        if len(buffer) >= 8:
            needed = 8 + struct.unpack("<Q", buffer[:8])[0]
        if len(buffer) >= needed:
            break
    if len(buffer) < needed or needed == 8:
        raise DatasetError(f"shard {key} is truncated")
    header = json.loads(buffer[8:needed])
    return dict(header.get("__metadata__", {}))


def read_dataset_info(store: ObjectStore, dataset_id: str) -> DatasetInfo:
    prefix = layout.dataset_prefix(dataset_id)
    if not store.exists(f"{prefix}stats.json"):
        raise DatasetError(f"dataset {dataset_id} is not complete: {prefix}stats.json is missing")
    try:
        text = store.get_bytes(f"{prefix}labels.txt").decode("utf-8")
    except ObjectNotFound:
        raise DatasetError(f"dataset {dataset_id} has no labels.txt") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) < 2:
        raise DatasetError(f"dataset {dataset_id} has {len(labels)} classes; training needs 2+")
    shape: tuple[int, int, int] | None = None
    splits: dict[str, SplitInfo] = {}
    for split in layout.SPLITS:
        keys = [
            k
            for k in store.list(f"{prefix}{split}/")
            if k.rsplit("/", 1)[-1].startswith("shard-") and k.endswith(".safetensors")
        ]
        if not keys:
            continue
        counts: list[int] = []
        for key in keys:
            meta = read_shard_metadata(store, key)
            this = (int(meta["channels"]), int(meta["height"]), int(meta["width"]))
            if shape is not None and this != shape:
                raise DatasetError(f"shard {key} holds {this} images, others {shape}")
            shape = this
            counts.append(int(meta["count"]))
        splits[split] = SplitInfo(keys=keys, counts=counts)
    if shape is None or "train" not in splits:
        raise DatasetError(f"dataset {dataset_id} has no training shards")
    channels, height, width = shape
    return DatasetInfo(dataset_id, labels, channels, height, width, splits)


def read_mean(store: ObjectStore, dataset_id: str) -> np.ndarray | None:
    """The dataset's mean image (mean.npy, never unpickled), or None when there is none."""
    try:
        data = store.get_bytes(f"{layout.dataset_prefix(dataset_id)}mean.npy")
    except ObjectNotFound:
        return None
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float32)


def _decode(store: ObjectStore, key: str) -> tuple[np.ndarray, np.ndarray]:
    shard = read_shard(store.get_bytes(key))
    return np.ascontiguousarray(shard.images.transpose(0, 3, 1, 2)), shard.labels


def load_split(
    store: ObjectStore, split: SplitInfo, threads: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """All of a split's images as uint8 [N, C, H, W] and labels int64 [N]."""
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        parts = list(pool.map(lambda key: _decode(store, key), split.keys))
    images = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 1, 1, 1), np.uint8)
    labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    return images, labels.astype(np.int64)


def compute_mean(images: np.ndarray) -> np.ndarray:
    """Mean image [H, W, C] float32 of uint8 [N, C, H, W] images (when mean.npy is absent)."""
    total = np.zeros(images.shape[1:], dtype=np.float64)
    for start in range(0, len(images), 4096):
        total += images[start : start + 4096].sum(axis=0, dtype=np.float64)
    return (total / max(1, len(images))).transpose(1, 2, 0).astype(np.float32)


def epoch_indices(
    count: int, epoch: int, seed: int, rank: int, world: int, shuffle: bool
) -> torch.Tensor:
    """This rank's sample indices for an epoch (DistributedSampler, drop_last=False)."""
    if shuffle:
        gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
        order = torch.randperm(count, generator=gen)
    else:
        order = torch.arange(count)
    per_rank = math.ceil(count / world)
    padding = per_rank * world - count
    if padding:
        order = torch.cat([order, order[:padding]])
    return order[rank::world]


class InMemoryTrain:
    """A split held as tensors; batches are index gathers (no per-sample Python)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rank: int, world: int) -> None:
        self.images = images
        self.labels = labels
        self.rank = rank
        self.world = world

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(len(self.labels) / self.world)

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.samples_per_rank / batch_size)

    def batches(
        self, epoch: int, batch_size: int, seed: int, shuffle: bool, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_indices(len(self.labels), epoch, seed, self.rank, self.world, shuffle)
        order = order.to(self.images.device)
        for start in range(skip * batch_size, len(order), batch_size):
            index = order[start : start + batch_size]
            yield self.images[index], self.labels[index]


class InMemoryEval:
    """This rank's contiguous slice of an evaluation split."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, rank: int, world: int) -> None:
        count = len(labels)
        lo, hi = count * rank // world, count * (rank + 1) // world
        self.images = images[lo:hi]
        self.labels = labels[lo:hi]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.labels), batch_size):
            yield self.images[start : start + batch_size], self.labels[start : start + batch_size]


class _Prefetcher:
    """Decodes the next shard in a background thread while the current one is used."""

    def __init__(self, store: ObjectStore, keys: list[str]) -> None:
        self._store = store
        self._keys = keys
        self._pool = ThreadPoolExecutor(max_workers=1)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if not self._keys:
            return
        future = self._pool.submit(_decode, self._store, self._keys[0])
        for position in range(len(self._keys)):
            current = future.result()
            if position + 1 < len(self._keys):
                future = self._pool.submit(_decode, self._store, self._keys[position + 1])
            yield current

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class StreamingTrain:
    """A large split read shard by shard: each epoch deals shards to ranks round-robin.

    Each rank yields exactly `samples_per_rank` samples per epoch (ceil(total / world)),
    cycling through its shards when it got fewer samples, so ranks stay in step for DDP.
    """

    def __init__(self, store: ObjectStore, split: SplitInfo, rank: int, world: int) -> None:
        self.store = store
        self.split = split
        self.rank = rank
        self.world = world

    @property
    def samples_per_rank(self) -> int:
        return math.ceil(self.split.count / self.world)

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.samples_per_rank / batch_size)

    def _my_shards(self, epoch: int, seed: int, shuffle: bool) -> list[str]:
        count = len(self.split.keys)
        if shuffle:
            gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
            order = torch.randperm(count, generator=gen).tolist()
        else:
            order = list(range(count))
        mine = order[self.rank :: self.world] or [order[self.rank % count]]
        return [self.split.keys[i] for i in mine]

    def batches(
        self, epoch: int, batch_size: int, seed: int, shuffle: bool, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        keys = self._my_shards(epoch, seed, shuffle)
        quota = self.samples_per_rank
        needed = skip * batch_size
        gen = torch.Generator().manual_seed((seed * 7919 + epoch * 31 + self.rank) % (2**63))
        pending_x: list[torch.Tensor] = []
        pending_y: list[torch.Tensor] = []
        pending = 0
        produced = 0
        while produced < quota:
            prefetch = _Prefetcher(self.store, keys)
            try:
                for images, labels in prefetch:
                    x, y = torch.from_numpy(images), torch.from_numpy(labels)
                    if shuffle:
                        perm = torch.randperm(len(y), generator=gen)
                        x, y = x[perm], y[perm]
                    take = min(len(y), quota - produced)
                    x, y = x[:take], y[:take]
                    produced += take
                    if needed:
                        dropped = min(needed, take)
                        x, y, needed = x[dropped:], y[dropped:], needed - dropped
                    if len(y):
                        pending_x.append(x)
                        pending_y.append(y)
                        pending += len(y)
                    while pending >= batch_size:
                        bx, by = torch.cat(pending_x), torch.cat(pending_y)
                        yield bx[:batch_size], by[:batch_size]
                        pending_x, pending_y = [bx[batch_size:]], [by[batch_size:]]
                        pending -= batch_size
                    if produced >= quota:
                        break
            finally:
                prefetch.close()
        if pending:
            yield torch.cat(pending_x), torch.cat(pending_y)


class StreamingEval:
    """This rank's shards of an evaluation split (round-robin), read one at a time."""

    def __init__(self, store: ObjectStore, split: SplitInfo, rank: int, world: int) -> None:
        self.store = store
        self.keys = split.keys[rank::world]

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        prefetch = _Prefetcher(self.store, self.keys)
        try:
            for images, labels in prefetch:
                for start in range(0, len(labels), batch_size):
                    yield (
                        torch.from_numpy(images[start : start + batch_size]),
                        torch.from_numpy(labels[start : start + batch_size]),
                    )
        finally:
            prefetch.close()
