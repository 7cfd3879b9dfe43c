"""Classify-many as a Ray job, submitted through the real Ray Jobs API as the controller does."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from controller.ray_local import LocalRayHead
from jobs.evaluation import classify_entries, parse_image_list, top_n_per_category
from jobs.events import parse_jsonl
from jobs.inference import InferenceService, load_model
from jobs.storage import LocalStore
from tests.jobs.inference_helpers import (
    HELD_OUT,
    png_bytes,
    trained_lenet,
    write_pngs,
    write_trained,
)
from tests.jobs.train_helpers import job_events, wait_terminal

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
COUNT = 600
TIMEOUT_S = 240.0


def _submit(client: JobSubmissionClient, store: LocalStore, prefix: str, roots: Path, *args: str):
    entrypoint = " ".join(
        [
            sys.executable, "-m", "jobs.classify_job", f"--store {store.url}",
            "--model-id m1", f"--snapshot {prefix}", f"--data-roots {roots}",
            "--batch-size 128", "--device cpu", *args,
        ]
    )  # fmt: skip
    return client.submit_job(
        entrypoint=entrypoint,
        submission_id=f"kdigits-classify-{uuid.uuid4().hex[:10]}",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}},
    )


def test_classify_many_job(ray_head: LocalRayHead, tmp_path: Path, mnist_arrays) -> None:
    images, labels = mnist_arrays
    store = LocalStore(tmp_path / "store")
    prefix = write_trained(store, trained_lenet(mnist_arrays))
    data = tmp_path / "data"
    written = write_pngs(data / "digits", images[HELD_OUT][:COUNT], labels[HELD_OUT][:COUNT])
    text = "".join(f"{path.relative_to(data / 'digits')} {label}\n" for path, label in written)
    store.put_bytes("models/m1/classify/job1/list.txt", text.encode())
    client = JobSubmissionClient(ray_head.dashboard_url)

    submission = _submit(
        client, store, prefix, data,
        "--list models/m1/classify/job1/list.txt", "--out models/m1/classify/job1/result.json",
        f"--folder {data / 'digits'}", "--top-n 9",
    )  # fmt: skip
    status = wait_terminal(client, submission, TIMEOUT_S)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(submission)[-3000:]
    events = job_events(client, submission)
    progress = [e for e in events if e["kind"] == "progress"]
    assert progress[0]["progress"] == 0 and progress[-1]["progress"] == 1.0
    assert progress[-1]["images"] == COUNT
    assert events[-1]["kind"] == "done" and events[-1]["phase"] == "Succeeded"
    stored = parse_jsonl(store.get_bytes("models/m1/classify/job1/events.jsonl"))
    assert [e["kind"] for e in stored] == [e["kind"] for e in events]

    answer = json.loads(store.get_bytes("models/m1/classify/job1/result.json"))
    model = load_model(store, prefix, device="cpu")
    entries = parse_image_list(text, [data], folder=str(data / "digits"), classes=10)
    local = classify_entries(model, entries)
    expected = local.to_json()
    assert answer["count"] == COUNT and answer["errors"] == {}
    assert {p: c[0][0] for p, c in answer["classifications"].items()} == {
        p: c[0][0] for p, c in expected["classifications"].items()
    }
    assert answer["confusionMatrix"] == expected["confusionMatrix"]
    assert answer["top1Accuracy"] == pytest.approx(expected["top1Accuracy"])
    assert answer["top1Accuracy"] > 0.85
    assert np.array(answer["confusionMatrix"]).sum() == COUNT
    assert [c["label"] for c in answer["topN"]] == [c["label"] for c in top_n_per_category(local)]
    assert answer["epoch"] == 2 and answer["snapshot"] == prefix


def test_classify_job_refuses_paths_outside_roots(
    ray_head: LocalRayHead, tmp_path: Path, mnist_arrays
) -> None:
    store = LocalStore(tmp_path / "store")
    prefix = write_trained(store, trained_lenet(mnist_arrays))
    data = tmp_path / "data"
    data.mkdir()
    store.put_bytes("models/m1/classify/job2/list.txt", b"/etc/passwd 1\n")
    client = JobSubmissionClient(ray_head.dashboard_url)
    submission = _submit(
        client, store, prefix, data,
        "--list models/m1/classify/job2/list.txt", "--out models/m1/classify/job2/result.json",
    )  # fmt: skip
    assert wait_terminal(client, submission, TIMEOUT_S) == JobStatus.FAILED
    done = job_events(client, submission)[-1]
    assert done["kind"] == "done" and done["phase"] == "Failed"
    assert "image_list line 1: /etc/passwd is outside the data roots" in done["message"]
    assert not store.exists("models/m1/classify/job2/result.json")


def test_inference_service_as_a_ray_actor(
    ray_head: LocalRayHead, tmp_path: Path, mnist_arrays
) -> None:
    import ray

    images, _ = mnist_arrays
    store = LocalStore(tmp_path / "store")
    prefix = write_trained(store, trained_lenet(mnist_arrays))
    digits = [png_bytes(images[i]) for i in HELD_OUT[:8]]
    local = InferenceService(store.url, device="cpu")
    expected = local.classify(prefix, digits)
    assert len(local.cache) == 1

    ray.init(
        address=ray_head.address,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}},
        log_to_driver=False,
    )
    try:
        actor: Any = ray.remote(num_cpus=0.5)(InferenceService).remote(store.url)
        first = ray.get(actor.classify.remote(prefix, digits), timeout=TIMEOUT_S)
        again = ray.get(actor.classify.remote(prefix, digits[:2]), timeout=TIMEOUT_S)
        view: Any = ray.get(actor.visualize.remote(prefix, digits[0]), timeout=TIMEOUT_S)
        ray.kill(actor)
    finally:
        ray.shutdown()
    assert [a[0][0] for a in first] == [a[0][0] for a in expected]
    assert [a[0][0] for a in again] == [a[0][0] for a in expected[:2]]
    assert view["totalParameters"] == local.cache.get(store, prefix).parameters
