"""Helpers for the training tests: datasets written straight into a store, job submission.

`write_dataset` lays a dataset out exactly as the dataset job does (jobs.layout, jobs.shards:
labels.txt, mean.npy as float32 [H, W, C], shards per split, stats.json last), so training
tests do not depend on building one. Jobs go through the Ray Jobs API as the controller's do.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray.job_submission import JobStatus, JobSubmissionClient

from jobs import layout
from jobs.events import Event, parse_lines
from jobs.shards import write_shard
from jobs.specs import ModelSpec
from jobs.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}


def write_dataset(
    store: ObjectStore,
    dataset_id: str,
    images: np.ndarray,
    labels: np.ndarray,
    splits: dict[str, np.ndarray],
    encoding: str = "png",
    shard_size: int = 256,
) -> None:
    """Shards of `images[indices]` per split; images uint8 [N, H, W] or [N, H, W, C]."""
    if images.ndim == 3:
        images = images[..., None]
    prefix = layout.dataset_prefix(dataset_id)
    classes = max(int(labels[indices].max()) for indices in splits.values()) + 1
    store.put_bytes(f"{prefix}labels.txt", "".join(f"{c}\n" for c in range(classes)).encode())
    counts: dict[str, int] = {}
    for split, indices in splits.items():
        for shard, start in enumerate(range(0, len(indices), shard_size)):
            part = indices[start : start + shard_size]
            body = write_shard(images[part], labels[part].astype(np.int64), encoding)
            store.put_bytes(layout.shard_key(dataset_id, split, shard), body)
        counts[split] = len(indices)
    mean = images[splits["train"]].astype(np.float64).mean(axis=0).astype(np.float32)
    buffer = __import__("io").BytesIO()
    np.save(buffer, mean, allow_pickle=False)
    store.put_bytes(f"{prefix}mean.npy", buffer.getvalue())
    height, width, channels = images.shape[1:]
    stats = {
        "complete": True,
        "images": counts,
        "classes": classes,
        "image": {"channels": channels, "height": height, "width": width},
        "encoding": encoding,
    }
    store.put_bytes(f"{prefix}stats.json", json.dumps(stats).encode())


def split_indices(
    labels: np.ndarray, counts: dict[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
    """Disjoint random index sets of the given sizes (every class in each, roughly even)."""
    order = np.random.default_rng(seed).permutation(len(labels))
    out: dict[str, np.ndarray] = {}
    start = 0
    for split, count in counts.items():
        out[split] = np.sort(order[start : start + count])
        start += count
    return out


def write_model_spec(
    store: ObjectStore, model_id: str, spec: ModelSpec | dict[str, Any]
) -> ModelSpec:
    model = spec if isinstance(spec, ModelSpec) else ModelSpec.model_validate(spec)
    store.put_bytes(
        f"{layout.model_prefix(model_id)}spec.json", json.dumps(model.to_json_dict()).encode()
    )
    return model


def submit_train(
    client: JobSubmissionClient,
    store_url: str,
    model_id: str,
    dataset_id: str,
    submission_id: str,
    extra: str = "",
    env: dict[str, str] | None = None,
    ray_storage: Path | None = None,
) -> str:
    """Submit `python -m jobs.train`; Ray Train keeps its checkpoints under `ray_storage`."""
    if ray_storage is not None:
        extra = f"--ray-storage {ray_storage} {extra}"
    entrypoint = (
        f"{sys.executable} -m jobs.train --store {store_url} --model-id {model_id} "
        f"--dataset-id {dataset_id} {extra}"
    ).strip()
    env_vars = {"PYTHONPATH": str(REPO), **(env or {})}
    return client.submit_job(
        entrypoint=entrypoint,
        submission_id=submission_id,
        runtime_env={"env_vars": env_vars},
    )


def job_events(client: JobSubmissionClient, submission_id: str) -> list[Event]:
    return list(parse_lines(client.get_job_logs(submission_id).splitlines()))


def wait_terminal(client: JobSubmissionClient, submission_id: str, timeout: float) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get_job_status(submission_id)
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    logs = client.get_job_logs(submission_id)[-4000:]
    raise TimeoutError(f"job {submission_id} still {status} after {timeout:.0f}s:\n{logs}")


def wait_for_event(
    client: JobSubmissionClient,
    submission_id: str,
    predicate: Any,
    timeout: float,
    poll: float = 0.2,
) -> Event:
    """The first event in the job's logs matching `predicate`, polling until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in job_events(client, submission_id):
            if predicate(event):
                return event
        if client.get_job_status(submission_id) in TERMINAL:
            break
        time.sleep(poll)
    logs = client.get_job_logs(submission_id)[-4000:]
    raise TimeoutError(f"no matching event from {submission_id}:\n{logs}")


def metrics(events: list[Event], name: str, split: str) -> list[Event]:
    return [
        e for e in events if e.get("kind") == "metric" and e["name"] == name and e["split"] == split
    ]
