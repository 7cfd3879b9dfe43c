"""Model training job: `python -m jobs.train --store URL --model-id ID --dataset-id ID`.

The driver (this entry point, run by the Ray Jobs API) reads `models/<id>/spec.json` and the
dataset, resolves the network (a `previous` or `pretrained` one from `--init-from`, a snapshot
prefix), and checks everything it can before compute is spent: a network that cannot take the
images, a crop larger than them, a previous model trained on another input shape. Those fail
with a message naming the field and a `done` event with phase Failed, exit code 2 (bad
input: the controller does not retry it); a training failure exits 1.

It then loads small datasets into Ray's object store once and runs a Ray Train TorchTrainer
whose module-level `train_func(config)` trains with DDP on every worker: per-rank sharding of
the in-memory uint8 tensors (jobs.data), batched augmentation (jobs.transforms), mixed precision
on GPU, batch accumulation. Rank 0 alone emits events (train loss every few iterations, val
loss/accuracy at each validation interval, learning rate, images/s per training epoch, epoch,
progress and ETA), rewrites `events.jsonl` at each validation and snapshot, and writes
snapshots (jobs.snapshots) to the store, each also reported as a Ray Train checkpoint.
`training.batchSize` is the global batch: each of N workers takes ceil(batchSize / N), so N
DDP workers take the same solver steps as one. Metric names: `loss`, `accuracy` (a fraction),
`learning_rate`, `images_per_second` (split `train`, one per epoch, training time only); the
first `progress` event of each attempt carries rank 0's `pid`, `rank` and `world`.

Resume: every attempt (Ray Train restarting its workers, or the controller re-submitting the
job) starts from the newest complete snapshot, in the store or from ray.train.get_checkpoint(),
skips the batches already done, and seeds the event history with the stored events up to that
snapshot, so each epoch is trained once and the metric history stays continuous.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jobs import layout
from jobs.data import (
    IN_MEMORY_MAX_BYTES,
    DatasetError,
    DatasetInfo,
    InMemoryEval,
    InMemoryTrain,
    SplitInfo,
    StreamingEval,
    StreamingTrain,
    compute_mean,
    load_split,
    read_dataset_info,
    read_mean,
)
from jobs.events import EVENTS_FILE, Event, EventLog, parse_jsonl
from jobs.networks import (
    NetworkInputError,
    adopt_channels_last,
    build_network,
    check_network,
    load_matching,
    network_defaults,
    training_loss,
)
from jobs.snapshots import (
    NetworkInfo,
    decode_info,
    decode_state,
    decode_weights,
    encode_snapshot,
    get_snapshot,
    latest_snapshot,
    model_weights,
    put_snapshot,
    read_snapshot_dir,
    write_snapshot_dir,
)
from jobs.solvers import build_optimizer, build_scheduler, param_groups
from jobs.specs import MeanSubtraction, ModelSpec, NetworkSpec, Phase
from jobs.storage import ObjectNotFound, ObjectStore, open_store
from jobs.transforms import BatchTransform, mean_tensor

CHECKPOINT_MARKER = "snapshot.json"  # in Ray checkpoints only: which store prefix it mirrors
EPS = 1e-9


class SetupError(ValueError):
    """The job cannot start: the message names the spec field at fault."""


@dataclass
class Plan:
    """Everything the workers need, resolved and checked by the driver (the train config)."""

    store_url: str
    model_id: str
    dataset_id: str
    spec: dict[str, Any]
    network: dict[str, Any]
    labels: list[str]
    channels: int
    image_height: int
    image_width: int
    crop_size: int | None
    batch_size: int
    per_worker_batch: int
    seed: int
    allow_custom_python: bool
    init_from: str | None
    mean: Any  # float32 ndarray [H, W, C] or None
    bias_lr_mult: float
    bias_decay_mult: float
    in_memory: bool
    data: dict[str, Any] = field(default_factory=dict)  # split -> (images ref, labels ref)
    shards: dict[str, tuple[list[str], list[int]]] = field(default_factory=dict)

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.spec)

    @property
    def network_spec(self) -> NetworkSpec:
        return NetworkSpec.model_validate(self.network)

    @property
    def input_size(self) -> tuple[int, int]:
        if self.crop_size is None:
            return self.image_height, self.image_width
        return self.crop_size, self.crop_size

    def network_info(self, epoch: float | None) -> NetworkInfo:
        height, width = self.input_size
        return NetworkInfo(
            network=self.network_spec,
            channels=self.channels,
            height=height,
            width=width,
            image_height=self.image_height,
            image_width=self.image_width,
            classes=len(self.labels),
            labels=self.labels,
            mean_subtraction=self.model_spec.transform.mean_subtraction,
            crop_size=self.crop_size,
            epoch=epoch,
            model_id=self.model_id,
            dataset_id=self.dataset_id,
        )


# --------------------------------------------------------------------------- driver: checks


def events_key(model_id: str) -> str:
    return f"{layout.model_prefix(model_id)}{EVENTS_FILE}"


def read_spec(store: ObjectStore, model_id: str) -> ModelSpec:
    key = f"{layout.model_prefix(model_id)}spec.json"
    try:
        return ModelSpec.model_validate_json(store.get_bytes(key))
    except ObjectNotFound:
        raise SetupError(f"spec: {key} does not exist") from None


def resolve_network(
    spec: ModelSpec, store: ObjectStore, init_from: str | None, data: DatasetInfo
) -> tuple[NetworkSpec, NetworkInfo | None]:
    """The architecture to build, and the snapshot to start from when fine-tuning."""
    network = spec.network
    if network.standard is None and network.custom is None:
        field_name = "network.previous" if network.previous is not None else "network.pretrained"
        if init_from is None:
            raise SetupError(f"{field_name}: no snapshot given to start from (--init-from)")
        try:
            source = decode_info(get_snapshot(store, init_from))
        except (FileNotFoundError, ValueError) as error:
            raise SetupError(
                f"{field_name}: cannot read the snapshot at {init_from}: {error}"
            ) from None
        if source.channels != data.channels:
            raise SetupError(
                f"{field_name}: the model was trained on {source.channels}-channel images but "
                f"the dataset's image.channels is {data.channels}"
            )
        if (source.image_height, source.image_width) != (data.height, data.width):
            raise SetupError(
                f"{field_name}: the model was trained on {source.image_width}x"
                f"{source.image_height} images but the dataset's image.width x image.height is "
                f"{data.width}x{data.height}"
            )
        return source.network, source
    if init_from is not None:
        try:
            return network, decode_info(get_snapshot(store, init_from))
        except (FileNotFoundError, ValueError) as error:
            raise SetupError(
                f"--init-from: cannot read the snapshot at {init_from}: {error}"
            ) from None
    return network, None


def choose_crop(
    spec: ModelSpec, network: NetworkSpec, data: DatasetInfo, source: NetworkInfo | None
) -> int | None:
    crop = spec.transform.crop_size
    if crop is None and source is not None:
        crop = source.crop_size
    if crop is None:
        default = network_defaults(network).crop_size
        if default is not None and default <= min(data.height, data.width):
            crop = default
    if crop is not None and crop > min(data.height, data.width):
        raise SetupError(
            f"transform.cropSize: {crop} is larger than the dataset's {data.width}x{data.height} "
            "images (image.width x image.height)"
        )
    return crop


def plan_job(
    args: argparse.Namespace, store: ObjectStore, spec: ModelSpec
) -> tuple[Plan, DatasetInfo]:
    """Resolve and check the job; raises SetupError naming the field at fault."""
    try:
        data = read_dataset_info(store, args.dataset_id)
    except DatasetError as error:
        raise SetupError(f"dataset: {error}") from None
    network, source = resolve_network(spec, store, args.init_from, data)
    crop = choose_crop(spec, network, data, source)
    height, width = (crop, crop) if crop is not None else (data.height, data.width)
    size_field = "transform.cropSize" if crop is not None else "image.height/image.width"
    try:
        check_network(
            network, data.channels, height, width, len(data.labels), args.allow_custom_python,
            size_field=size_field,
        )  # fmt: skip
    except NetworkInputError as error:
        raise SetupError(str(error)) from None
    workers = spec.resources.workers
    train_count = data.count("train")
    if train_count < workers:
        raise SetupError(
            f"resources.workers: {workers} workers but only {train_count} training images"
        )
    defaults = network_defaults(network)
    batch = spec.training.batch_size or defaults.batch_size
    mean = None
    if spec.transform.mean_subtraction != MeanSubtraction.NONE:
        mean = read_mean(store, args.dataset_id)
        if mean is not None:
            try:
                mean_tensor(
                    mean, spec.transform.mean_subtraction, data.channels, data.height, data.width
                )
            except ValueError as error:
                raise SetupError(f"transform.meanSubtraction: dataset mean.npy: {error}") from None
    in_memory = data.raw_bytes <= args.in_memory_max_bytes
    if mean is None and not in_memory and spec.transform.mean_subtraction != MeanSubtraction.NONE:
        raise SetupError(
            "transform.meanSubtraction: the dataset has no mean.npy to subtract (set it to none)"
        )
    seed = spec.training.seed if spec.training.seed is not None else random.randrange(2**31)
    plan = Plan(
        store_url=args.store,
        model_id=args.model_id,
        dataset_id=args.dataset_id,
        spec=spec.model_dump(mode="json", by_alias=True),
        network=network.model_dump(mode="json", by_alias=True, exclude_none=True),
        labels=data.labels,
        channels=data.channels,
        image_height=data.height,
        image_width=data.width,
        crop_size=crop,
        batch_size=batch,
        per_worker_batch=max(1, math.ceil(batch / workers)),
        seed=seed,
        allow_custom_python=args.allow_custom_python,
        init_from=args.init_from,
        mean=mean,
        bias_lr_mult=defaults.bias_lr_mult,
        bias_decay_mult=defaults.bias_decay_mult,
        in_memory=in_memory,
    )
    return plan, data


def load_data(plan: Plan, data: DatasetInfo, store: ObjectStore) -> None:
    """Put small datasets into Ray's object store once (decoded, [N, C, H, W] uint8)."""
    import ray

    if not plan.in_memory:
        plan.shards = {s: (i.keys, i.counts) for s, i in data.splits.items()}
        return
    for split, info in data.splits.items():
        images, labels = load_split(store, info)
        if (
            split == "train"
            and plan.mean is None
            and (plan.model_spec.transform.mean_subtraction != MeanSubtraction.NONE)
        ):
            plan.mean = compute_mean(images)
        plan.data[split] = (ray.put(images), ray.put(labels))


# --------------------------------------------------------------------------- workers


class _Timer:
    """Wall time of the training segments of an epoch (validation and snapshots excluded)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = 0.0
        self.images = 0
        self._start: float | None = None

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is None:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self._start = None

    def reset(self) -> None:
        self.seconds, self.images, self._start = 0.0, 0, None


class TrainRun:
    """One attempt of one worker: data, model, solver, resume, the loop, events, snapshots."""

    def __init__(self, plan: Plan) -> None:
        import ray.train
        import ray.train.torch

        self.plan = plan
        self.spec = plan.model_spec
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        torch.set_num_threads(max(1, int(self.spec.resources.cpus_per_worker)))
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp = self.device.type == "cuda" and self.spec.resources.mixed_precision
        self.store = open_store(plan.store_url)
        self.classes = len(plan.labels)
        self.training = self.spec.training
        self.accum = self.training.batch_accumulation
        self.log: EventLog | None = None
        self._setup_data()
        self._setup_model()

    # -- data
    def _setup_data(self) -> None:
        import ray

        plan = self.plan
        self.eval_sets: dict[str, InMemoryEval | StreamingEval] = {}
        if plan.in_memory:
            on_device = self.device if self.device.type == "cuda" else torch.device("cpu")
            tensors = {}
            for split, (images_ref, labels_ref) in plan.data.items():
                images = torch.from_numpy(np.array(ray.get(images_ref))).to(on_device)
                labels = torch.from_numpy(np.array(ray.get(labels_ref))).to(on_device)
                tensors[split] = (images, labels)
            images, labels = tensors.pop("train")
            self.train_set: InMemoryTrain | StreamingTrain = InMemoryTrain(
                images, labels, self.rank, self.world
            )
            for split, (images, labels) in tensors.items():
                self.eval_sets[split] = InMemoryEval(images, labels, self.rank, self.world)
        else:
            infos = {s: SplitInfo(keys=k, counts=c) for s, (k, c) in plan.shards.items()}
            self.train_set = StreamingTrain(self.store, infos.pop("train"), self.rank, self.world)
            for split, info in infos.items():
                self.eval_sets[split] = StreamingEval(self.store, info, self.rank, self.world)
        mean = mean_tensor(
            plan.mean,
            self.spec.transform.mean_subtraction,
            plan.channels,
            plan.image_height,
            plan.image_width,
        )
        self.transform = BatchTransform(
            self.spec.transform,
            mean,
            plan.channels,
            plan.image_height,
            plan.image_width,
            plan.crop_size,
            self.device,
        )
        self.batches_per_epoch = self.train_set.batches_per_epoch(plan.per_worker_batch)
        self.total_iterations = self.batches_per_epoch * self.training.epochs
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.accum)

    # -- model, solver, resume
    def _setup_model(self) -> None:
        import ray.train.torch

        plan = self.plan
        height, width = plan.input_size
        model = build_network(
            plan.network_spec, plan.channels, height, width, self.classes, plan.allow_custom_python
        )
        if plan.init_from is not None:
            load_matching(model, decode_weights(get_snapshot(self.store, plan.init_from)))
        resume = self._find_resume()
        self.state: dict[str, Any] = {}
        self.resume_prefix: str | None = None
        if resume is not None:
            files, self.resume_prefix = resume
            model.load_state_dict(decode_weights(files))
            self.state = decode_state(files)
        if self.device.type == "cpu":
            self._channels_last(model, plan.channels, height, width)
        self.seed = int(self.state.get("seed", plan.seed))
        self.iteration = int(self.state.get("iteration", 0))
        torch.manual_seed((self.seed * 1_000_003 + self.iteration * 7 + self.rank) % (2**63))
        groups = param_groups(
            model, self.spec.solver.weight_decay, plan.bias_lr_mult, plan.bias_decay_mult
        )
        self.model = ray.train.torch.prepare_model(model)
        self.module: nn.Module = getattr(self.model, "module", self.model)
        self.optimizer = build_optimizer(groups, self.spec.solver)
        self.scheduler = build_scheduler(
            self.optimizer, self.spec.solver.lr_policy, self.steps_per_epoch * self.training.epochs
        )
        if self.state:
            self.optimizer.load_state_dict(self.state["optimizer"])
            self.scheduler.load_state_dict(self.state["scheduler"])

    def _find_resume(self) -> tuple[dict[str, bytes], str] | None:
        """The newest snapshot: in the store, or Ray Train's checkpoint if that is newer."""
        import ray.train

        best: tuple[float, dict[str, bytes], str] | None = None
        latest = latest_snapshot(self.store, self.plan.model_id)
        if latest is not None:
            best = (latest[0], get_snapshot(self.store, latest[1]), latest[1])
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                marker = json.loads((Path(directory) / CHECKPOINT_MARKER).read_text())
                ours = marker.get("store") == self.plan.store_url and str(
                    marker.get("key", "")
                ).startswith(layout.model_prefix(self.plan.model_id))
                if ours and (best is None or float(marker["epoch"]) > best[0] + EPS):
                    files = read_snapshot_dir(Path(directory))
                    best = (float(marker["epoch"]), files, str(marker["key"]))
                    if self.rank == 0:  # the store missed it: put it back, lose no snapshot
                        put_snapshot(self.store, best[2], files)
        return (best[1], best[2]) if best is not None else None

    # -- events (rank 0 only)
    def _open_log(self) -> EventLog | None:
        if self.rank != 0:
            return None
        key = events_key(self.plan.model_id)
        history: list[Event] = []
        if self.state:
            with contextlib.suppress(ObjectNotFound):
                history = parse_jsonl(self.store.get_bytes(key))[: int(self.state["history"])]
        log = EventLog(self.store, key, history=history)
        if self.resume_prefix is not None and not any(
            e.get("kind") == "snapshot" and e.get("key") == self.resume_prefix for e in history
        ):
            log.emit("snapshot", epoch=float(self.state["epoch"]), key=self.resume_prefix)
        return log

    def _metric(self, name: str, split: str, value: float, epoch: float) -> None:
        if self.log is not None:
            self.log.emit("metric", name=name, split=split, value=value, epoch=round(epoch, 4))

    # -- evaluation
    def evaluate(self, split: str) -> tuple[float, float] | None:
        source = self.eval_sets.get(split)
        if source is None:
            return None
        self.module.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        with torch.no_grad(), self._autocast():
            for images, labels in source.batches(self.plan.per_worker_batch):
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                logits = self.module(self.transform.evaluate(images))
                loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
                totals[0] += loss.double()
                totals[1] += (logits.argmax(1) == labels).sum()
                totals[2] += labels.numel()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)
        self.model.train()
        count = float(totals[2])
        if count == 0:
            return None
        return float(totals[0]) / count, float(totals[1]) / count

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _validate(self, epoch: float) -> None:
        result = self.evaluate("val")
        if result is not None:
            self._metric("loss", "val", result[0], epoch)
            self._metric("accuracy", "val", result[1], epoch)
        if self.log is not None:
            self.log.flush()

    # -- snapshots
    def _snapshot(self, label: float, val_index: int, snap_index: int) -> None:
        import ray.train

        prefix = layout.snapshot_prefix(self.plan.model_id, label)
        metrics = {"epoch": label, "iteration": self.iteration}
        if self.rank != 0 or self.log is None:
            ray.train.report(metrics)
            return
        state = {
            "version": 1,
            "epoch": label,
            "iteration": self.iteration,
            "seed": self.seed,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "val_index": val_index,
            "snapshot_index": snap_index,
            "history": len(self.log.events) + 1,  # up to and including this snapshot event
            "rng": torch.get_rng_state(),
        }
        files = encode_snapshot(
            model_weights(self.model), self.plan.network_info(label), state, self._mean_hwc()
        )
        put_snapshot(self.store, prefix, files)
        self.log.emit("snapshot", epoch=label, key=prefix)
        self.log.flush()
        with tempfile.TemporaryDirectory(prefix="kdigits-ckpt-") as directory:
            write_snapshot_dir(Path(directory), files)
            marker = {"epoch": label, "key": prefix, "store": self.plan.store_url}
            (Path(directory) / CHECKPOINT_MARKER).write_text(json.dumps(marker))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
            ray.train.report(metrics, checkpoint=checkpoint)

    def _mean_hwc(self) -> np.ndarray | None:
        if self.plan.mean is None or self.spec.transform.mean_subtraction == MeanSubtraction.NONE:
            return None
        return np.asarray(self.plan.mean, dtype=np.float32)

    # -- the loop
    def run(self) -> None:
        self.log = self._open_log()
        bpe = self.batches_per_epoch
        epochs = self.training.epochs
        val_every, snap_every = self.training.validation_interval, self.training.snapshot_interval
        val_index = int(self.state.get("val_index", 0))
        snap_index = int(self.state.get("snapshot_index", 0))
        log_every = max(1, min(50, bpe // 10))
        self._progress("training", pid=os.getpid(), rank=self.rank, world=self.world)
        timer = _Timer(self.device)
        attempt_start, attempt_first = time.perf_counter(), self.iteration
        running = torch.zeros((), device=self.device)
        running_count = 0
        self.model.train()
        while self.iteration < self.total_iterations:
            epoch_index, skip = divmod(self.iteration, bpe)
            timer.reset()
            timer.start()
            batches = self.train_set.batches(
                epoch_index, self.plan.per_worker_batch, self.seed, self.training.shuffle, skip
            )
            gen = self._augment_generator(epoch_index, skip)
            for position, (images, labels) in enumerate(batches, start=skip):
                group_start = position - position % self.accum
                group_size = min(self.accum, bpe - group_start)
                group_end = position + 1 == group_start + group_size
                loss = self._micro_step(images, labels, gen, group_end, group_size)
                running += loss
                running_count += 1
                timer.images += labels.shape[0]
                self.iteration += 1
                if not group_end:
                    continue
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                epoch = self.iteration / bpe
                if self.iteration % log_every == 0 or position + 1 == bpe:
                    mean_loss = float(running) / max(1, running_count)
                    running.zero_()
                    running_count = 0
                    self._metric("loss", "train", mean_loss, epoch)
                    self._metric(
                        "learning_rate", "train", float(self.scheduler.get_last_lr()[0]), epoch
                    )
                    self._progress_eta(epoch, attempt_start, attempt_first)
                due_val = math.floor(epoch / val_every + EPS) > val_index
                due_snap = math.floor(epoch / snap_every + EPS) > snap_index
                finished = self.iteration >= self.total_iterations
                epoch_end = position + 1 == bpe
                if epoch_end or due_val or due_snap:
                    timer.stop()
                if epoch_end:
                    self._images_per_second(timer, epoch)
                if due_val or (finished and val_index * val_every < epochs - EPS):
                    val_index = max(val_index, math.floor(epoch / val_every + EPS))
                    self._validate(epoch)
                if due_snap or (finished and snap_index * snap_every < epochs - EPS):
                    snap_index = max(snap_index, math.floor(epoch / snap_every + EPS))
                    label = float(epochs) if finished else round(snap_index * snap_every, 4)
                    self._snapshot(label, val_index, snap_index)
                if (due_val or due_snap) and not epoch_end:
                    timer.start()
        self._finish()

    def _channels_last(self, model: nn.Module, channels: int, height: int, width: int) -> None:
        """Train a CPU convolution network in channels-last layout when it computes the same
        (`adopt_channels_last`: oneDNN's vectorised convolutions and pooling). The probe is
        two random images in evaluation mode, from a generator of its own: the run's random
        streams are untouched. Snapshots store contiguous tensors either way."""
        probe = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0))
        probe = probe * 255.0

        def run(channels_last: bool) -> torch.Tensor:
            model.eval()
            with torch.no_grad():
                return model(probe)

        if adopt_channels_last(model, run) and self.rank == 0:
            print("training in channels-last memory layout", flush=True)
        model.train()

    def _micro_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        gen: torch.Generator,
        sync: bool,
        group_size: int,
    ) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        inputs = self.transform.train(images, gen)
        no_sync = getattr(self.model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with context:
            with self._autocast():
                outputs = self.model(inputs)
                loss, _ = training_loss(outputs, labels)
            (loss / group_size).backward()
        return loss.detach()

    def _augment_generator(self, epoch_index: int, skip: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(
            (self.seed * 104_729 + epoch_index * 1_299_709 + skip * 31 + self.rank) % (2**63)
        )
        return gen

    def _images_per_second(self, timer: _Timer, epoch: float) -> None:
        if timer.seconds > 0:
            rate = timer.images * self.world / timer.seconds
            self._metric("images_per_second", "train", rate, epoch)

    def _progress(self, stage: str, **fields: Any) -> None:
        if self.log is not None:
            progress = self.iteration / max(1, self.total_iterations)
            epoch = round(self.iteration / self.batches_per_epoch, 4)
            self.log.emit(
                "progress",
                progress=round(progress, 4),
                eta=None,
                stage=stage,
                epoch=epoch,
                **fields,
            )

    def _progress_eta(self, epoch: float, start: float, first: int) -> None:
        if self.log is None:
            return
        done = self.iteration - first
        elapsed = time.perf_counter() - start
        eta = elapsed / done * (self.total_iterations - self.iteration) if done else None
        self.log.emit(
            "progress",
            progress=round(self.iteration / max(1, self.total_iterations), 4),
            eta=round(eta, 1) if eta is not None else None,
            stage="training",
            epoch=round(epoch, 4),
        )

    def _finish(self) -> None:
        epochs = float(self.training.epochs)
        result = self.evaluate("test")
        if result is not None:
            self._metric("loss", "test", result[0], epochs)
            self._metric("accuracy", "test", result[1], epochs)
        if self.log is not None:
            message = f"trained {self.training.epochs} epochs"
            val = [
                e
                for e in self.log.events
                if e.get("name") == "accuracy" and e.get("split") == "val"
            ]
            if val:
                message += f"; validation accuracy {100 * float(val[-1]['value']):.2f}%"
            self.log.emit("progress", progress=1.0, eta=0, stage="done", epoch=epochs)
            self.log.emit("done", phase=Phase.SUCCEEDED.value, message=message)
            self.log.flush()


def train_func(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point."""
    TrainRun(Plan(**config)).run()


# --------------------------------------------------------------------------- driver


def ray_storage_path(args: argparse.Namespace) -> str:
    if args.ray_storage:
        return str(args.ray_storage)
    return os.path.join(tempfile.gettempdir(), "kdigits-ray-train")


def ray_run_name(plan: Plan) -> str:
    """One Ray Train run per model and store: a retried attempt finds its own checkpoints."""
    store = hashlib.sha256(plan.store_url.encode()).hexdigest()[:10]
    return f"kdigits-model-{plan.model_id}-{store}"


def build_trainer(plan: Plan, args: argparse.Namespace) -> Any:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = plan.model_spec.resources
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if resources.gpus_per_worker > 0:
        per_worker["GPU"] = resources.gpus_per_worker
    return TorchTrainer(
        train_func,
        train_loop_config={f.name: getattr(plan, f.name) for f in fields(plan)},
        scaling_config=ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=per_worker,
        ),
        # Train V2's RunConfig (what ray.train exports at run time; mypy sees the V1 one).
        run_config=RunConfig(  # type: ignore[call-arg]
            name=ray_run_name(plan),
            storage_path=ray_storage_path(args),
            failure_config=FailureConfig(max_failures=args.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            # Ray starts task and actor processes at niceness 15; training workers are the
            # point of the node, so they run at the niceness asked for (default 0).
            worker_runtime_env={"env_vars": {"RAY_worker_niceness": str(args.worker_niceness)}},
        ),
    )


def fail(store: ObjectStore | None, model_id: str, message: str) -> int:
    """Report a failure as a `done` event (kept in events.jsonl) and a non-zero exit."""
    history: list[Event] = []
    key = events_key(model_id)
    if store is not None:
        with contextlib.suppress(ObjectNotFound):
            history = parse_jsonl(store.get_bytes(key))
    log = EventLog(store, key, history=history)
    log.emit("done", phase=Phase.FAILED.value, message=message)
    with contextlib.suppress(Exception):
        log.flush()
    print(f"error: {message}", file=sys.stderr)
    return 1


def main(args: argparse.Namespace) -> int:
    store: ObjectStore | None = None
    try:
        store = open_store(args.store)
        spec = read_spec(store, args.model_id)
        plan, data = plan_job(args, store, spec)
    except (SetupError, ValueError) as error:
        fail(store, args.model_id, str(error))
        return 2  # bad input: the controller does not retry it
    store.put_bytes(
        f"{layout.model_prefix(args.model_id)}labels.txt", ("\n".join(plan.labels) + "\n").encode()
    )
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    load_data(plan, data, store)
    try:
        build_trainer(plan, args).fit()
    except Exception as error:  # Ray Train gave up (retries exhausted) or could not start
        return fail(store, args.model_id, f"training failed: {_first_line(error)}")
    return 0


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[-1] if text else type(error).__name__)[:500]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a kdigits Model with Ray Train")
    parser.add_argument(
        "--store",
        default=os.environ.get("KDIGITS_STORE_URL", ""),
        help="object store URL (file:///path or s3://bucket/prefix); default $KDIGITS_STORE_URL",
    )
    parser.add_argument(
        "--model-id", default="", help="the Model's id: reads models/<id>/spec.json"
    )
    parser.add_argument("--dataset-id", default="", help="the Dataset's id: datasets/<id>/")
    parser.add_argument(
        "--init-from",
        default=None,
        help="snapshot prefix to fine-tune from: models/<id>/snapshots/epoch-N/ or "
        "pretrained/<id>/",
    )
    parser.add_argument(
        "--allow-custom-python",
        action="store_true",
        default=_env_flag("KDIGITS_ALLOW_CUSTOM_PYTHON"),
        help="allow network.custom.python (runs user code); default $KDIGITS_ALLOW_CUSTOM_PYTHON",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=2,
        help="worker-group failures Ray Train recovers from by resuming the last snapshot",
    )
    parser.add_argument(
        "--ray-storage",
        default=os.environ.get("KDIGITS_RAY_STORAGE", ""),
        help="Ray Train storage path for its checkpoints (shared storage on multi-node "
        "clusters); default $KDIGITS_RAY_STORAGE or a local temp folder",
    )
    parser.add_argument(
        "--worker-niceness",
        type=int,
        default=int(os.environ.get("KDIGITS_TRAIN_WORKER_NICENESS", "0")),
        help="niceness of the training worker processes (Ray's default for workers is 15, "
        "which starves training on a shared machine); default $KDIGITS_TRAIN_WORKER_NICENESS or 0",
    )
    parser.add_argument(
        "--in-memory-max-bytes",
        type=int,
        default=IN_MEMORY_MAX_BYTES,
        help="datasets up to this many raw pixel bytes are held in memory; larger are streamed",
    )
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("store", "model_id", "dataset_id"):
        if not getattr(args, name):
            parser.error(f"--{name.replace('_', '-')} is required")


def cli(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    return main(args)


if __name__ == "__main__":
    # Run the imported module's entry point, not __main__'s, so Ray pickles train_func by
    # reference to `jobs.train`, which every worker imports.
    from jobs.train import cli as _cli

    raise SystemExit(_cli())
