"""The training job through the Ray Jobs API, as the controller submits it, on real digits.

Three Ray runs, kept short: bad inputs fail before any training starts; one worker trains a
few hundred digits for two epochs and leaves snapshots that load with safetensors alone (then
a second model fine-tunes one of them onto five classes); two DDP workers train while rank 0's
process is killed mid-epoch (Ray Train resumes it) and the whole job is stopped and
re-submitted under a new submission id (it resumes from the store).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ray.job_submission import JobStatus, JobSubmissionClient
from safetensors.torch import load_file

from controller.ray_local import LocalRayHead
from jobs import layout
from jobs.data import (
    DatasetError,
    InMemoryTrain,
    StreamingTrain,
    epoch_indices,
    load_split,
    read_dataset_info,
)
from jobs.events import Event, parse_jsonl
from jobs.networks import build_network
from jobs.snapshots import NetworkInfo, encode_snapshot, list_snapshots, put_snapshot
from jobs.specs import NetworkSpec
from jobs.storage import LocalStore, ObjectStore
from tests.jobs.train_helpers import (
    REPO,
    job_events,
    metrics,
    split_indices,
    submit_train,
    wait_for_event,
    wait_terminal,
    write_dataset,
    write_model_spec,
)

pytestmark = pytest.mark.ray

Digits = tuple[np.ndarray, np.ndarray]


@pytest.fixture()
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def _lenet_spec(epochs: int, workers: int = 1, **training: object) -> dict[str, object]:
    return {
        "dataset": "digits",
        "network": {"standard": "lenet"},
        "training": {"epochs": epochs, "seed": 7, "batchSize": 32, **training},
        "solver": {"baseLr": 0.02, "lrPolicy": {"policy": "fixed"}},
        "resources": {"workers": workers, "cpusPerWorker": 1},
    }


def _run_cli(
    store: ObjectStore, model_id: str, dataset_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobs.train", "--store", store.url, "--model-id", model_id,
         "--dataset-id", dataset_id, *extra],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


def _ray(store: LocalStore) -> Path:
    return store.root.parent / "ray"  # Ray Train's own checkpoints, beside the store


def _stored_events(store: ObjectStore, model_id: str) -> list[Event]:
    return parse_jsonl(store.get_bytes(f"{layout.model_prefix(model_id)}events.jsonl"))


def _done(events: list[Event]) -> list[Event]:
    return [e for e in events if e["kind"] == "done"]


def test_bad_inputs_fail_before_training(
    ray_head: LocalRayHead, store: LocalStore, mnist_arrays: Digits
) -> None:
    images, labels = mnist_arrays
    small = images[:, 10:18, 10:18]  # 8x8 digits: too small for LeNet
    write_dataset(store, "tiny", small, labels, split_indices(labels, {"train": 64, "val": 16}))
    write_dataset(store, "digits", images, labels, split_indices(labels, {"train": 64, "val": 16}))

    # Through the Jobs API, as the controller sees it: FAILED, with the reason as an event.
    write_model_spec(store, "too-small", {**_lenet_spec(1), "dataset": "tiny"})
    client = JobSubmissionClient(ray_head.dashboard_url)
    sid = submit_train(
        client, store.url, "too-small", "tiny", "train-too-small-1", ray_storage=_ray(store)
    )
    assert wait_terminal(client, sid, timeout=120) == JobStatus.FAILED
    done = _done(job_events(client, sid))
    assert len(done) == 1 and done[0]["phase"] == "Failed"
    message = str(done[0]["message"])
    assert message.startswith("image.height/image.width: lenet cannot take 1x8x8 inputs")
    assert "needs at least 13x13" in message
    assert _done(_stored_events(store, "too-small")) == done  # kept in events.jsonl too
    assert not store.list("models/too-small/snapshots/")

    # A crop larger than the images.
    write_model_spec(store, "big-crop", {**_lenet_spec(1), "transform": {"cropSize": 32}})
    result = _run_cli(store, "big-crop", "digits")
    assert result.returncode == 2
    assert "transform.cropSize: 32 is larger than the dataset's 28x28 images" in result.stderr

    # Fine-tuning a model trained on another input shape.
    info = NetworkInfo(
        network=NetworkSpec(standard="lenet"), channels=3, height=32, width=32,
        image_height=32, image_width=32, classes=10,
    )  # fmt: skip
    weights = build_network(info.network, 3, 32, 32, 10).state_dict()
    put_snapshot(store, "pretrained/color32/", encode_snapshot(weights, info, None, None))
    spec = {**_lenet_spec(1), "network": {"pretrained": {"name": "color32"}}}
    write_model_spec(store, "finetune", spec)
    result = _run_cli(store, "finetune", "digits", "--init-from", "pretrained/color32/")
    assert result.returncode == 2
    assert (
        "network.pretrained: the model was trained on 3-channel images but the dataset's "
        "image.channels is 1" in result.stderr
    )
    events = _stored_events(store, "finetune")
    assert [e["phase"] for e in _done(events)] == ["Failed"]


def _evaluate_snapshot(
    store: LocalStore, prefix: str, images: np.ndarray, labels: np.ndarray
) -> float:
    """Accuracy of a snapshot rebuilt from network.json + model.safetensors, nothing else."""
    folder = store.root / prefix
    info = json.loads((folder / "network.json").read_text())
    network = NetworkSpec.model_validate(info["network"])
    model = build_network(network, info["channels"], info["height"], info["width"], info["classes"])
    model.load_state_dict(load_file(folder / "model.safetensors"))
    model.eval()
    mean = np.load(folder / "mean.npy", allow_pickle=False)  # [H, W, C]
    pixels = torch.from_numpy(images[:, None].astype(np.float32) - mean.transpose(2, 0, 1))
    with torch.no_grad():
        predicted = model(pixels).argmax(1).numpy()
    return float((predicted == labels).mean())


def test_one_worker_trains_and_writes_loadable_snapshots(
    ray_head: LocalRayHead, store: LocalStore, mnist_arrays: Digits
) -> None:
    images, labels = mnist_arrays
    splits = split_indices(labels, {"train": 640, "val": 200, "test": 160}, seed=1)
    write_dataset(store, "digits", images, labels, splits)
    write_model_spec(store, "one", _lenet_spec(2, validationInterval=0.5))
    client = JobSubmissionClient(ray_head.dashboard_url)
    sid = submit_train(client, store.url, "one", "digits", "train-one-1", ray_storage=_ray(store))
    assert wait_terminal(client, sid, timeout=300) == JobStatus.SUCCEEDED, client.get_job_logs(sid)

    logged = job_events(client, sid)
    stored = _stored_events(store, "one")
    assert [(e["kind"], e["time"]) for e in stored] == [(e["kind"], e["time"]) for e in logged]
    train_loss = metrics(stored, "loss", "train")
    assert len(train_loss) >= 4 and train_loss[-1]["value"] < train_loss[0]["value"]
    assert [e["epoch"] for e in metrics(stored, "accuracy", "val")] == [0.5, 1.0, 1.5, 2.0]
    assert len(metrics(stored, "loss", "val")) == 4
    assert metrics(stored, "learning_rate", "train")[0]["value"] == pytest.approx(0.02)
    speeds = metrics(stored, "images_per_second", "train")
    assert [e["epoch"] for e in speeds] == [1.0, 2.0] and all(e["value"] > 0 for e in speeds)
    progress = [e for e in stored if e["kind"] == "progress"]
    assert progress[-1]["progress"] == 1.0
    assert any(e.get("eta") is not None for e in progress)
    assert [(e["epoch"], e["key"]) for e in stored if e["kind"] == "snapshot"] == [
        (1.0, "models/one/snapshots/epoch-0001/"),
        (2.0, "models/one/snapshots/epoch-0002/"),
    ]
    assert [e["phase"] for e in _done(stored)] == ["Succeeded"]
    assert store.get_bytes("models/one/labels.txt").decode().split() == [str(d) for d in range(10)]

    val_accuracy = metrics(stored, "accuracy", "val")[-1]["value"]
    test_accuracy = metrics(stored, "accuracy", "test")
    assert len(test_accuracy) == 1 and test_accuracy[0]["epoch"] == 2.0
    assert val_accuracy > 0.75, f"validation accuracy {val_accuracy} after 2 epochs"

    # Snapshots: weights with safetensors alone, the network from network.json.
    assert [epoch for epoch, _ in list_snapshots(store, "one")] == [1.0, 2.0]
    test_images, test_labels = images[splits["test"]], labels[splits["test"]]
    mine = _evaluate_snapshot(store, "models/one/snapshots/epoch-0002/", test_images, test_labels)
    assert mine == pytest.approx(test_accuracy[0]["value"], abs=1e-9)
    first = _evaluate_snapshot(store, "models/one/snapshots/epoch-0001/", test_images, test_labels)
    assert first > 0.5
    state = torch.load(
        io.BytesIO(store.get_bytes("models/one/snapshots/epoch-0002/state.pt")), weights_only=True
    )
    assert state["epoch"] == 2.0 and state["iteration"] == 40 and "optimizer" in state

    # Fine-tune that snapshot onto digits 0-4: the 10-class last layer is replaced by 5.
    five = {s: idx[labels[idx] < 5] for s, idx in splits.items() if s != "test"}
    write_dataset(store, "five", images, labels, five)
    spec = {**_lenet_spec(1), "dataset": "five", "network": {"previous": {"model": "one"}}}
    write_model_spec(store, "tuned", spec)
    extra = "--init-from models/one/snapshots/epoch-0002/"
    sid = submit_train(
        client, store.url, "tuned", "five", "train-tuned-1", extra, ray_storage=_ray(store)
    )
    assert wait_terminal(client, sid, timeout=300) == JobStatus.SUCCEEDED, client.get_job_logs(sid)
    tuned = json.loads(store.get_bytes("models/tuned/snapshots/epoch-0001/network.json"))
    assert tuned["classes"] == 5 and tuned["labels"] == ["0", "1", "2", "3", "4"]
    assert tuned["network"] == {"standard": "lenet"}
    tuned_weights = load_file(store.root / "models/tuned/snapshots/epoch-0001/model.safetensors")
    assert tuned_weights["classifier.3.weight"].shape == (5, 500)
    tuned_accuracy = metrics(_stored_events(store, "tuned"), "accuracy", "val")[-1]["value"]
    assert tuned_accuracy > 0.85, f"fine-tuned validation accuracy {tuned_accuracy}"


def test_two_workers_resume_after_a_killed_worker_and_a_resubmitted_job(
    ray_head: LocalRayHead, store: LocalStore, mnist_arrays: Digits
) -> None:
    images, labels = mnist_arrays
    splits = split_indices(labels, {"train": 4000, "val": 500}, seed=2)
    write_dataset(store, "digits", images, labels, splits)
    write_model_spec(store, "ddp", _lenet_spec(3, workers=2))
    client = JobSubmissionClient(ray_head.dashboard_url)
    first = submit_train(
        client,
        store.url,
        "ddp",
        "digits",
        "train-ddp-1",
        "--max-failures 2",
        ray_storage=_ray(store),
    )

    def training_started(event: Event) -> bool:
        return event["kind"] == "progress" and "pid" in event

    started = wait_for_event(client, first, training_started, timeout=240)
    assert started["world"] == 2 and started["epoch"] == 0.0

    # Kill rank 0's process once training is past the epoch-1 snapshot.
    def in_epoch_two(event: Event) -> bool:
        return event["kind"] == "metric" and event["name"] == "loss" and 1.0 < event["epoch"] < 2.0

    seen = wait_for_event(client, first, in_epoch_two, timeout=240, poll=0.1)
    os.kill(int(started["pid"]), signal.SIGKILL)
    assert store.exists("models/ddp/snapshots/epoch-0001/state.pt")

    # Ray Train restarts the worker group, which resumes from the last snapshot.
    def restarted(event: Event) -> bool:
        return training_started(event) and event["pid"] != started["pid"]

    again = wait_for_event(client, first, restarted, timeout=300)
    resumed_epoch = float(again["epoch"])
    assert resumed_epoch in (1.0, 2.0), "resumed from the last snapshot before the kill"
    assert resumed_epoch <= float(seen["epoch"]) + 1.0

    # Stop the whole job once it is training epoch 3, then re-submit it.
    def in_epoch_three(event: Event) -> bool:
        return event["kind"] == "metric" and event["name"] == "loss" and event["epoch"] > 2.0

    wait_for_event(client, first, in_epoch_three, timeout=240, poll=0.1)
    client.stop_job(first)
    assert wait_terminal(client, first, timeout=120) == JobStatus.STOPPED
    last_stored = list_snapshots(store, "ddp")[-1][0]
    second = submit_train(
        client, store.url, "ddp", "digits", "train-ddp-2", ray_storage=_ray(store)
    )
    assert wait_terminal(client, second, timeout=300) == JobStatus.SUCCEEDED
    restart = next(e for e in job_events(client, second) if training_started(e))
    assert restart["epoch"] == last_stored

    # Every epoch trained exactly once, the history continuous, no snapshot lost.
    events = _stored_events(store, "ddp")
    assert [e["epoch"] for e in metrics(events, "accuracy", "val")] == [1.0, 2.0, 3.0]
    loss_epochs = [e["epoch"] for e in metrics(events, "loss", "train")]
    assert loss_epochs == sorted(set(loss_epochs)) and loss_epochs[-1] == 3.0
    assert [e["epoch"] for e in metrics(events, "images_per_second", "train")] == [1.0, 2.0, 3.0]
    snapshots = [e["key"] for e in events if e["kind"] == "snapshot"]
    assert snapshots == [f"models/ddp/snapshots/epoch-000{n}/" for n in (1, 2, 3)]
    assert [epoch for epoch, _ in list_snapshots(store, "ddp")] == [1.0, 2.0, 3.0]
    assert [e["phase"] for e in _done(events)] == ["Succeeded"]
    # DDP with two workers learns like one: LeNet on 4,000 digits, 3 epochs.
    assert metrics(events, "accuracy", "val")[-1]["value"] > 0.93


def test_dataset_reading_and_per_rank_batches(store: LocalStore, mnist_arrays: Digits) -> None:
    """No Ray: the input pipeline the workers use, in memory and streamed, for 2 ranks."""
    images, labels = mnist_arrays
    splits = split_indices(labels, {"train": 500, "val": 100}, seed=3)
    write_dataset(store, "digits", images, labels, splits, encoding="none", shard_size=64)
    info = read_dataset_info(store, "digits")
    assert (info.channels, info.height, info.width, len(info.labels)) == (1, 28, 28, 10)
    assert info.count("train") == 500 and info.count("val") == 100 and info.count("test") == 0
    x, y = load_split(store, info.splits["train"])
    assert x.shape == (500, 1, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(x[:, 0], images[splits["train"]]) and np.array_equal(
        y, labels[splits["train"]]
    )

    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    ranks = [InMemoryTrain(tx, ty, rank, 2) for rank in range(2)]
    streams = [StreamingTrain(store, info.splits["train"], rank, 2) for rank in range(2)]
    for source in (ranks, streams):
        per_rank = [list(r.batches(epoch=4, batch_size=32, seed=9, shuffle=True)) for r in source]
        assert [len(b) for b in per_rank] == [source[0].batches_per_epoch(32)] * 2 == [8, 8]
        assert sum(len(lab) for b in per_rank for _, lab in b) == 500  # 250 per rank
        seen = torch.cat([img.flatten(1) for b in per_rank for img, _ in b])
        unique = len(torch.unique(seen, dim=0))
        if source is ranks:
            assert unique == 500, "an epoch covers every training image"
        else:  # shards dealt to ranks; the one with fewer images tops up from its own shards
            assert 480 <= unique <= 500
        skipped = list(source[0].batches(epoch=4, batch_size=32, seed=9, shuffle=True, skip=5))
        assert len(skipped) == 3 and torch.equal(skipped[0][1], per_rank[0][5][1])
    # Same seed and epoch on every rank; the order changes with the epoch.
    assert torch.equal(epoch_indices(10, 1, 5, 0, 2, True), epoch_indices(10, 1, 5, 0, 2, True))
    assert not torch.equal(epoch_indices(10, 1, 5, 0, 2, True), epoch_indices(10, 2, 5, 0, 2, True))
    union = torch.cat([epoch_indices(11, 0, 5, r, 3, True) for r in range(3)])
    assert len(union) == 12 and set(union.tolist()) == set(range(11))  # padded like torch's

    store.delete("datasets/digits/stats.json")
    with pytest.raises(DatasetError, match="not complete"):
        read_dataset_info(store, "digits")
