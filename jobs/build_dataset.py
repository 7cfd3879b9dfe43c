"""The dataset build job: DIGITS' "new image classification dataset", as a Ray job.

Run inside a Ray job (the controller submits it through the Ray Jobs API; `RAY_ADDRESS` is set
by Ray, so `ray.init()` takes no address):

    python -m jobs.build_dataset --store URL --dataset-id ID [--data-roots DIR:DIR]
                                 [--parallelism N] [--chunk-size N]

Arguments:
  --store URL          object store holding `datasets/<id>/spec.json` (the DatasetSpec JSON the
                       controller wrote) and receiving the artifacts: `file:///dir` or
                       `s3://bucket/prefix` (default: `KDIGITS_STORE_URL`, else
                       `file://$KDIGITS_HOME/store`, KDIGITS_HOME defaulting to ~/.kdigits)
  --dataset-id ID      the dataset's id, i.e. the store prefix `datasets/<ID>/` (default:
                       `KDIGITS_DATASET_ID`)
  --data-roots D:D     folders that source paths may name; anything resolving outside them is
                       refused (default: `KDIGITS_DATA_ROOTS`, else KDIGITS_HOME and the home
                       directory)
  --parallelism N      at most N chunk tasks in flight (default 0: all queued at once, so
                       every CPU of the cluster, however many nodes, takes chunks)
  --chunk-size N       images per task and per shard (default 0: guided sizes from the
                       dataset size and the cluster's CPUs, 2000 at most and 200 at least,
                       large first and small last so that the workers finish together)

What it does: if `stats.json` is there and complete, it exits 0 at once (idempotent);
otherwise it deletes whatever a previous attempt left under the prefix (except `spec.json`),
lists the source, drops classes under `split.minPerClass`, caps `split.maxPerClass`, splits
with DIGITS' semantics (val and test percentages taken per class from train unless separate
val/test folders or lists are given), shuffles with the seed (derived from the dataset id when
the spec has none, and recorded), and hands chunks to Ray tasks. Each task reads, decodes and
resizes its images and writes its shard (jobs/shards.py) straight to the object store, then
returns counts, skipped files with reasons, and the pixel sum for the mean image. The driver
writes `labels.txt`, `mean.npy` (float32 [H, W, C]), `mean.png`, `events.jsonl` and, last,
`stats.json`: the completion marker, so a failed or killed run leaves nothing that looks
complete. Progress, `stats` and `done` events go to stdout as `KDIGITS_EVENT` lines.

Scaling: the tasks are spread over every CPU of the Ray cluster, and each reads its images
itself (S3, or a folder that every node mounts at the same path) and writes its shard itself,
so the driver only lists and adds up counts. The source is listed before Ray is touched (a bad
source fails at once); then one worker per CPU is started and warmed up (imports, store
client). `stats.json` `timing` reports `listSeconds`, `rayInitSeconds`, `workerStartSeconds`,
and `processSeconds`: listing plus the time from handing out the first chunk to the last
shard written, i.e. listing to last shard without the worker start-up, which is Ray's.

Exit status: 0 built (or already built); 2 a bad source or spec (the message says which field
and why, after a `done` event with phase Failed); 1 anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.events import EVENTS_FILE, EventLog
from jobs.images import DEFAULT_LIMITS, DecodeLimits, ImageRejected, decode_image, resize
from jobs.layout import SPLITS, dataset_prefix, shard_key
from jobs.paths import PathNotAllowed, default_roots, parse_roots
from jobs.shards import write_shard
from jobs.sources import (
    REASON_UNKNOWN_CLASS,
    Entry,
    Listing,
    Reader,
    SourceError,
    list_source,
    make_reader,
)
from jobs.specs import DatasetSpec, SplitSpec
from jobs.storage import ObjectNotFound, ObjectStore, open_store

SPEC_FILE = "spec.json"
STATS_FILE = "stats.json"
LABELS_FILE = "labels.txt"
MEAN_NPY = "mean.npy"
MEAN_PNG = "mean.png"
MIN_CHUNK = 200
MAX_CHUNK = 2000
MAX_CHUNK_BYTES = 64 * 1024 * 1024  # raw pixels held by one task, about twice that at peak
GUIDED_DIVISOR = 2
MAX_SKIPPED_LISTED = 1000
MAX_WARM_WORKERS = 256
PROGRESS_EVERY_S = 0.5


class BuildError(Exception):
    """A bad spec or source: reported as phase Failed with this message, exit status 2."""


# --------------------------------------------------------------------------- planning


def derive_seed(dataset_id: str) -> int:
    """A stable seed for a dataset without one: the first 31 bits of sha256(id)."""
    return int.from_bytes(hashlib.sha256(dataset_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def three_way_split(size: int, pct_b: float, pct_c: float) -> tuple[int, int]:
    """DIGITS' three_way_split_indices: (end of a, end of b) for a/b/c = train/val/test.

    Every group with a non-zero percentage gets at least one item when the size allows.
    """
    pct_a = 100 - (pct_b + pct_c)
    if pct_a >= 100:
        return size, size
    a = int(math.floor(size * pct_a / 100 + 0.5))
    if pct_a and not a:
        a = 1
    b = int(math.floor(size * pct_b / 100 + 0.5))
    if a + b > size:
        b = size - a
    if pct_b and not b:
        if a > 1:
            a, b = a - 1, 1
        elif a != size:
            b = 1
    c = size - (a + b)
    if pct_c and not c:
        if b > 1:
            b -= 1
        elif a > 1:
            a -= 1
    return a, a + b


@dataclass
class Plan:
    """Which images go to which split, under which (renumbered) labels."""

    labels: list[str]
    splits: dict[str, list[Entry]]
    dropped: list[dict[str, Any]]
    seed: int


def _shuffled(entries: list[Entry], rng: np.random.Generator, shuffle: bool) -> list[Entry]:
    if not shuffle or len(entries) < 2:
        return entries
    return [entries[i] for i in rng.permutation(len(entries))]


def plan_dataset(listing: Listing, split: SplitSpec, seed: int) -> Plan:
    """Apply min/max per class, split per class as DIGITS did, and shuffle each split."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Entry]] = {i: [] for i in range(len(listing.labels))}
    for entry in listing.splits.get("train", []):
        by_class[entry.label].append(entry)
    val_pct = 0.0 if "val" in listing.splits else split.val_percent
    test_pct = 0.0 if "test" in listing.splits else split.test_percent
    kept: list[int] = []
    dropped: list[dict[str, Any]] = []
    parts: dict[str, list[Entry]] = {name: [] for name in SPLITS}
    for index, label in enumerate(listing.labels):
        entries = by_class[index]
        if len(entries) < split.min_per_class:
            reason = f"fewer than minPerClass ({split.min_per_class}) images"
            dropped.append({"label": label, "count": len(entries), "reason": reason})
            continue
        kept.append(index)
        entries = _shuffled(entries, rng, split.shuffle)
        if split.max_per_class is not None:
            entries = entries[: split.max_per_class]
        end_train, end_val = three_way_split(len(entries), val_pct, test_pct)
        parts["train"] += entries[:end_train]
        parts["val"] += entries[end_train:end_val]
        parts["test"] += entries[end_val:]
    for split_name, ignored in sorted(listing.ignored_classes.items()):
        for label, count in sorted(ignored.items()):
            reason = f"{split_name}: class {REASON_UNKNOWN_CLASS}"
            dropped.append({"label": label, "count": count, "reason": reason})
    if not kept:
        raise BuildError(
            f"split.minPerClass: no class has at least {split.min_per_class} images "
            f"(classes found: {len(listing.labels)}), so no classes are left"
        )
    renumber = {old: new for new, old in enumerate(kept)}
    for split_name in ("val", "test"):
        if split_name in listing.splits:
            parts[split_name] = [e for e in listing.splits[split_name] if e.label in renumber]
    splits = {
        name: _shuffled([Entry(e.location, renumber[e.label]) for e in entries], rng, split.shuffle)
        for name, entries in parts.items()
    }
    return Plan([listing.labels[i] for i in kept], splits, dropped, seed)


def plan_chunks(
    sizes: dict[str, int], cpus: int, image_bytes: int, fixed: int = 0
) -> list[tuple[str, int, int]]:
    """(split, begin, end) of each task, in submission order.

    With `fixed` > 0, chunks of that size. Otherwise guided self-scheduling: each chunk is the
    images still unassigned divided by 2 x CPUs (within MIN_CHUNK..MAX_CHUNK and MAX_CHUNK_BYTES),
    so early chunks are large (little per-task overhead) and the last ones small (workers
    finish together instead of one waiting on a big straggler).
    """
    cap = max(1, min(fixed or MAX_CHUNK, MAX_CHUNK_BYTES // max(1, image_bytes)))
    floor = min(MIN_CHUNK, cap) if not fixed else cap
    remaining = sum(sizes.values())
    chunks: list[tuple[str, int, int]] = []
    for split, count in sizes.items():
        begin = 0
        while begin < count:
            size = max(floor, min(cap, math.ceil(remaining / (GUIDED_DIVISOR * max(1, cpus)))))
            left = count - begin
            if left - size < floor and left <= cap:
                size = left  # no runt chunk at the end of a split
            size = min(size, left)
            chunks.append((split, begin, begin + size))
            begin += size
            remaining -= size
    return chunks


# --------------------------------------------------------------------------- the Ray task


@dataclass(frozen=True)
class ChunkTask:
    """Everything one Ray task needs: it opens the store and reads the images itself."""

    store_url: str
    key: str
    split: str
    prefix: str  # shared by every location: sent once, not with each entry
    entries: list[tuple[str, int]]  # (location without the prefix, label)
    width: int
    height: int
    channels: int
    resize_mode: str
    encoding: str
    num_labels: int
    seed: tuple[int, int, int]
    reader: Reader
    limits: DecodeLimits = DEFAULT_LIMITS


@dataclass
class ChunkResult:
    """What a task reports back: no pixels, only counts and the sum for the mean."""

    split: str
    key: str | None
    count: int
    per_label: list[int]
    skipped: list[tuple[str, str]]
    pixel_sum: np.ndarray
    seconds: float
    cpu_seconds: float
    started: float  # Unix time: the task's own start and end, for the pipeline timeline
    finished: float


def shared_prefix(locations: list[str]) -> str:
    """The longest common prefix of the locations, up to and including a `/`."""
    common = os.path.commonprefix(locations) if locations else ""
    return common[: common.rfind("/") + 1]


_STORES: dict[str, ObjectStore] = {}


def cached_store(url: str) -> ObjectStore:
    """One store object per URL per worker process (an S3 client is costly to make)."""
    store = _STORES.get(url)
    if store is None:
        store = _STORES[url] = open_store(url)
    return store


def process_chunk(task: ChunkTask) -> ChunkResult:
    """Read, decode and resize a chunk of images and write its shard; runs in a Ray worker."""
    started, wall_started, cpu_started = time.perf_counter(), time.time(), time.process_time()
    rng = np.random.default_rng(task.seed)
    shape = (task.height, task.width, task.channels)
    images = np.empty((len(task.entries), *shape), dtype=np.uint8)
    labels = np.empty(len(task.entries), dtype=np.int64)
    skipped: list[tuple[str, str]] = []
    count = 0
    for suffix, label in task.entries:
        location = task.prefix + suffix
        try:
            pixels = decode_image(task.reader.read(location), task.channels, task.limits)
            images[count] = resize(pixels, task.width, task.height, task.resize_mode, rng)
        except ImageRejected as rejected:
            skipped.append((location, rejected.reason))
            continue
        labels[count] = label
        count += 1
    images, labels = images[:count], labels[:count]
    if count:
        cached_store(task.store_url).put_bytes(task.key, write_shard(images, labels, task.encoding))
    return ChunkResult(
        split=task.split,
        key=task.key if count else None,
        count=count,
        per_label=np.bincount(labels, minlength=task.num_labels).tolist(),
        skipped=skipped,
        pixel_sum=images.sum(axis=0, dtype=np.float64),
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
        started=wall_started,
        finished=time.time(),
    )


def warm_worker(store_url: str, reader: Reader) -> int:
    """Start-up work done before the clock starts: imports, the store and its client."""
    from PIL import Image

    Image.init()
    cached_store(store_url)
    reader.warm()
    time.sleep(0.05)  # hold the worker so that each warm-up task lands on its own worker
    return os.getpid()


# --------------------------------------------------------------------------- the driver


@dataclass
class Totals:
    """What the driver accumulates from the task results."""

    labels: list[str]
    images: Counter[str] = field(default_factory=Counter)
    per_class: dict[str, list[int]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    shards: dict[str, list[str]] = field(default_factory=dict)
    pixel_sum: np.ndarray | None = None
    task_seconds: float = 0.0
    task_cpu_seconds: float = 0.0
    first_start: float = math.inf
    last_finish: float = 0.0

    def add(self, result: ChunkResult) -> None:
        self.task_seconds += result.seconds
        self.task_cpu_seconds += result.cpu_seconds
        self.first_start = min(self.first_start, result.started)
        self.last_finish = max(self.last_finish, result.finished)
        self.images[result.split] += result.count
        counts = self.per_class.setdefault(result.split, [0] * len(self.labels))
        for i, n in enumerate(result.per_label):
            counts[i] += n
        self.skipped.extend(result.skipped)
        if result.key is not None:
            self.shards.setdefault(result.split, []).append(result.key)
        if result.split == "train":
            total = self.pixel_sum
            self.pixel_sum = result.pixel_sum if total is None else total + result.pixel_sum


def is_complete(store: ObjectStore, prefix: str) -> bool:
    """True when `stats.json` exists and says the build completed."""
    try:
        stats = json.loads(store.get_bytes(prefix + STATS_FILE))
    except (ObjectNotFound, ValueError):
        return False
    return isinstance(stats, dict) and stats.get("complete") is True


def load_spec(store: ObjectStore, prefix: str) -> DatasetSpec:
    try:
        raw = store.get_bytes(prefix + SPEC_FILE)
    except ObjectNotFound:
        raise BuildError(f"{prefix}{SPEC_FILE} not found in {store.url}") from None
    try:
        return DatasetSpec.model_validate_json(raw)
    except ValueError as error:
        raise BuildError(f"{prefix}{SPEC_FILE} is not a valid DatasetSpec: {error}") from None


def clear_partial(store: ObjectStore, prefix: str) -> int:
    """Delete what an earlier attempt left under the prefix, keeping spec.json."""
    removed = 0
    for key in store.list(prefix):
        if key != prefix + SPEC_FILE:
            store.delete(key)
            removed += 1
    return removed


def mean_png(mean: np.ndarray) -> bytes:
    from PIL import Image

    pixels = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class DatasetBuild:
    """One build attempt of one dataset: the driver side of the job."""

    def __init__(
        self,
        store_url: str,
        dataset_id: str,
        roots: Sequence[Path],
        parallelism: int = 0,
        chunk_size: int = 0,
    ) -> None:
        self.store_url = store_url
        self.dataset_id = dataset_id
        self.roots = list(roots)
        self.parallelism = parallelism
        self.chunk_size = chunk_size
        self.store = open_store(store_url)
        self.prefix = dataset_prefix(dataset_id)
        self.events = EventLog(self.store, self.prefix + EVENTS_FILE)
        self.timing: dict[str, float] = {}

    def run(self) -> int:
        started = time.perf_counter()
        if is_complete(self.store, self.prefix):
            self.events.emit("done", phase="Succeeded", message="already built")
            return 0
        try:
            spec = load_spec(self.store, self.prefix)
            clear_partial(self.store, self.prefix)
            self._build(spec, started)
        except (BuildError, SourceError, PathNotAllowed) as error:
            self._fail(str(error))
            return 2
        except BaseException as error:
            self._fail(f"dataset build failed: {type(error).__name__}: {error}")
            raise
        return 0

    def _fail(self, message: str) -> None:
        self.events.emit("done", phase="Failed", message=message)
        try:
            self.events.flush()
        except Exception as error:  # the store itself may be what failed
            print(f"warning: could not write {EVENTS_FILE}: {error}", file=sys.stderr)
        print(f"error: {message}", file=sys.stderr)

    def _build(self, spec: DatasetSpec, started: float) -> None:
        list_started = time.perf_counter()
        self.events.emit("progress", progress=0.0, eta=None, stage="listing")
        listing = list_source(spec.source, self.roots)
        seed = spec.split.seed if spec.split.seed is not None else derive_seed(self.dataset_id)
        plan = plan_dataset(listing, spec.split, seed)
        if not plan.splits["train"]:
            raise BuildError("source: no training images found")
        self.timing["listSeconds"] = time.perf_counter() - list_started

        reader = make_reader(spec.source)
        cpus = self._start_workers(reader)
        image = spec.image
        sizes = {split: len(plan.splits[split]) for split in SPLITS}
        image_bytes = image.width * image.height * image.channels
        chunks = plan_chunks(sizes, cpus, image_bytes, self.chunk_size)
        dispatched, dispatched_wall = time.perf_counter(), time.time()
        tasks = self._tasks(spec, plan, reader, chunks)
        totals = Totals(labels=plan.labels, skipped=list(listing.skipped))
        self._run_tasks(tasks, totals, sum(sizes.values()), dispatched)
        self.timing["processSeconds"] = (
            self.timing["listSeconds"] + time.perf_counter() - dispatched
        )
        self.timing["taskSeconds"] = totals.task_seconds
        self.timing["taskCpuSeconds"] = totals.task_cpu_seconds
        self.timing["firstTaskStartSeconds"] = totals.first_start - dispatched_wall
        self.timing["lastTaskEndSeconds"] = totals.last_finish - dispatched_wall
        self._write_outputs(spec, plan, totals, chunks, cpus, started)

    def _start_workers(self, reader: Reader) -> int:
        """Connect to Ray and start one warm worker per CPU; returns the cluster's CPUs."""
        import ray

        began = time.perf_counter()
        if not ray.is_initialized():
            ray.init(logging_level=logging.WARNING, log_to_driver=True)
        self.timing["rayInitSeconds"] = time.perf_counter() - began
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        began = time.perf_counter()
        warm = ray.remote(num_cpus=1)(warm_worker)
        workers = min(cpus, MAX_WARM_WORKERS)
        ray.get([warm.remote(self.store_url, reader) for _ in range(workers)])
        self.timing["workerStartSeconds"] = time.perf_counter() - began
        return cpus

    def _tasks(
        self, spec: DatasetSpec, plan: Plan, reader: Reader, chunks: list[tuple[str, int, int]]
    ) -> list[ChunkTask]:
        tasks: list[ChunkTask] = []
        shard_index: Counter[str] = Counter()
        for split, begin, end in chunks:
            index = shard_index[split]
            shard_index[split] += 1
            part = plan.splits[split][begin:end]
            prefix = shared_prefix([entry.location for entry in part])
            tasks.append(
                ChunkTask(
                    store_url=self.store_url,
                    key=shard_key(self.dataset_id, split, index),
                    split=split,
                    prefix=prefix,
                    entries=[(e.location[len(prefix) :], e.label) for e in part],
                    width=spec.image.width,
                    height=spec.image.height,
                    channels=spec.image.channels,
                    resize_mode=spec.image.resize_mode.value,
                    encoding=spec.encoding.value,
                    num_labels=len(plan.labels),
                    seed=(plan.seed, SPLITS.index(split), index),
                    reader=reader,
                )
            )
        return tasks

    def _run_tasks(
        self, tasks: list[ChunkTask], totals: Totals, total: int, dispatched: float
    ) -> None:
        import ray

        remote = ray.remote(num_cpus=1)(process_chunk)
        window = self.parallelism if self.parallelism > 0 else len(tasks)
        queue = list(reversed(tasks))
        pending: list[Any] = []
        done_images = 0
        last_emit = 0.0
        while queue or pending:
            while queue and len(pending) < window:
                pending.append(remote.remote(queue.pop()))
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                result: ChunkResult = ray.get(ref)
                totals.add(result)
                done_images += result.count + len(result.skipped)
            now = time.perf_counter()
            if now - last_emit >= PROGRESS_EVERY_S or not (queue or pending):
                last_emit = now
                elapsed = now - dispatched
                fraction = done_images / total if total else 1.0
                eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
                self.events.emit(
                    "progress",
                    progress=round(fraction, 4),
                    eta=None if eta is None else round(eta, 1),
                    stage="processing",
                )

    def _write_outputs(
        self,
        spec: DatasetSpec,
        plan: Plan,
        totals: Totals,
        chunks: list[tuple[str, int, int]],
        cpus: int,
        started: float,
    ) -> None:
        if totals.images["train"] == 0 or totals.pixel_sum is None:
            raise BuildError("source: no training image could be read (see the skipped files)")
        store, prefix = self.store, self.prefix
        mean = (totals.pixel_sum / totals.images["train"]).astype(np.float32)
        labels_txt = "".join(f"{name}\n" for name in plan.labels)
        store.put_bytes(prefix + LABELS_FILE, labels_txt.encode("utf-8", "surrogateescape"))
        store.put_bytes(prefix + MEAN_NPY, npy_bytes(mean))
        store.put_bytes(prefix + MEAN_PNG, mean_png(mean))
        written = sum(totals.images.values())
        self.timing["totalSeconds"] = time.perf_counter() - started
        process_s = self.timing["processSeconds"]
        self.timing["imagesPerSecond"] = written / process_s if process_s > 0 else 0.0
        stats = self._stats(spec, plan, totals, chunks, cpus)
        self.events.emit(
            "stats",
            images=stats["images"],
            classes=stats["classes"],
            skipped=stats["skipped"]["count"],
        )
        self.events.emit(
            "done",
            phase="Succeeded",
            message=f"{written} images in {len(plan.labels)} classes, "
            f"{stats['skipped']['count']} skipped",
        )
        self.events.flush()
        store.put_bytes(prefix + STATS_FILE, json.dumps(stats, indent=1).encode())

    def _stats(
        self,
        spec: DatasetSpec,
        plan: Plan,
        totals: Totals,
        chunks: list[tuple[str, int, int]],
        cpus: int,
    ) -> dict[str, Any]:
        lengths = [end - begin for _, begin, end in chunks]
        reasons = Counter(reason for _, reason in totals.skipped)
        return {
            "complete": True,
            "images": {split: totals.images[split] for split in SPLITS},
            "classes": len(plan.labels),
            "labels": plan.labels,
            "perClass": {
                split: dict(
                    zip(
                        plan.labels,
                        totals.per_class.get(split, [0] * len(plan.labels)),
                        strict=True,
                    )
                )
                for split in SPLITS
            },
            "skipped": {
                "count": len(totals.skipped),
                "byReason": dict(sorted(reasons.items())),
                "files": [
                    {"path": path, "reason": reason}
                    for path, reason in totals.skipped[:MAX_SKIPPED_LISTED]
                ],
            },
            "droppedClasses": plan.dropped,
            "image": spec.image.to_json_dict(),
            "encoding": spec.encoding.value,
            "seed": plan.seed,
            "shuffle": spec.split.shuffle,
            "shards": {split: sorted(totals.shards.get(split, [])) for split in SPLITS},
            "chunks": {"tasks": len(chunks), "largest": max(lengths), "smallest": min(lengths)},
            "clusterCpus": cpus,
            "timing": {name: round(value, 4) for name, value in self.timing.items()},
        }


# --------------------------------------------------------------------------- command line


def _default_store_url() -> str:
    configured = os.environ.get("KDIGITS_STORE_URL", "")
    if configured:
        return configured
    home = Path(os.environ.get("KDIGITS_HOME") or Path.home() / ".kdigits")
    return (home / "store").resolve().as_uri()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.build_dataset",
        description="Build a DIGITS image classification dataset as a Ray job.",
    )
    parser.add_argument(
        "--store",
        default=_default_store_url(),
        help="object store URL, file:///dir or s3://bucket/prefix "
        "(default: KDIGITS_STORE_URL, else file://$KDIGITS_HOME/store)",
    )
    parser.add_argument(
        "--dataset-id",
        default=os.environ.get("KDIGITS_DATASET_ID", ""),
        help="dataset id: artifacts go under datasets/<ID>/ (default: KDIGITS_DATASET_ID)",
    )
    parser.add_argument(
        "--data-roots",
        default=None,
        help="':'-separated folders that source paths may name (default: KDIGITS_DATA_ROOTS, "
        "else KDIGITS_HOME and the home directory)",
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=0,
        help="most chunk tasks in flight at once (default 0: all queued, every CPU busy)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=0,
        help=f"images per task and shard (default 0: automatic, {MIN_CHUNK}..{MAX_CHUNK})",
    )
    args = parser.parse_args(argv)
    if not args.dataset_id:
        parser.error("--dataset-id is required (or set KDIGITS_DATASET_ID)")
    if args.parallelism < 0 or args.chunk_size < 0:
        parser.error("--parallelism and --chunk-size must be 0 or positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        roots = default_roots() if args.data_roots is None else parse_roots(args.data_roots)
        dataset_prefix(args.dataset_id)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    build = DatasetBuild(args.store, args.dataset_id, roots, args.parallelism, args.chunk_size)
    return build.run()


if __name__ == "__main__":
    # Run the imported module's main, not __main__'s: Ray then pickles the task functions
    # by reference to `jobs.build_dataset`, which every worker can import.
    from jobs.build_dataset import main as _main

    sys.exit(_main())
