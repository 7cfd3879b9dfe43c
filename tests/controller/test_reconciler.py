"""The reconciler against a real local Ray head, with fake_job.py as the job: submission,
tailing, status, metrics, retries, failures, abort, the queue, deletion and restarts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controller.api.main import create_app
from controller.ray_backend import submission_id
from controller.services import Services
from controller.settings import Settings
from tests.controller.conftest import fake_services

pytestmark = pytest.mark.ray
LOCAL = ("127.0.0.1", 40001)
TERMINAL = {"Succeeded", "Failed", "Aborted"}


@pytest.fixture
def services(fake_settings: Settings) -> Services:
    return fake_services(fake_settings)


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services=services), client=LOCAL) as c:
        yield c


def dataset(client: TestClient, settings: Settings, name: str, **labels: str) -> dict[str, Any]:
    train = Path(settings.data_roots) / "train"
    body = {
        "metadata": {"name": name, "labels": {f"fake/{k}": v for k, v in labels.items()}},
        "spec": {"source": {"folder": {"train": str(train)}}},
    }
    r = client.post("/api/v1/datasets", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def model(client: TestClient, name: str, ds: str, **labels: str) -> dict[str, Any]:
    body = {
        "metadata": {"name": name, "labels": {f"fake/{k}": v for k, v in labels.items()}},
        "spec": {"dataset": ds, "network": {"standard": "lenet"}, "maxRetries": 1},
    }
    r = client.post("/api/v1/models", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_for(
    client: TestClient,
    path: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 90,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        obj = client.get(path).json()
        if until(obj):
            return obj
        assert time.monotonic() < deadline, f"timed out on {path}: {obj.get('status')}"
        time.sleep(0.2)


def finished(obj: dict[str, Any]) -> bool:
    return obj["status"]["phase"] in TERMINAL


def test_dataset_then_model(client: TestClient, services: Services) -> None:
    dataset(client, services.settings, "digits")
    m = model(client, "lenet1", "digits", epochs="3", sleep="0.3")
    queued = wait_for(client, "/api/v1/models/lenet1", lambda o: o["status"]["phase"] != "Pending")
    assert queued["status"]["phase"] in ("Queued", "Running", "Succeeded")
    done = wait_for(client, "/api/v1/models/lenet1", finished)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["epoch"] == 3 and status["progress"] == 1
    assert status["metrics"]["trainLoss"] == pytest.approx(1 / 3)
    assert status["metrics"]["valAccuracy"] == pytest.approx(0.53)
    assert [s["epoch"] for s in status["snapshots"]] == [1, 2, 3]
    assert status["submissionId"] == submission_id("model", m["metadata"]["uid"], 1)
    ds = client.get("/api/v1/datasets/digits").json()["status"]
    assert ds["phase"] == "Succeeded" and ds["images"] == {"train": 80, "val": 20}
    assert ds["classes"] == 10 and ds["skipped"] == 1
    assert client.get("/api/v1/datasets/digits/stats").json()["images"]["train"] == 80
    series = {s["key"]: s for s in client.get("/api/v1/models/lenet1/metrics").json()["series"]}
    assert [p["epoch"] for p in series["valAccuracy"]["points"]] == [1, 2, 3]
    assert {"trainLoss", "valLoss", "trainLr", "trainImagesPerSecond"} <= set(series)
    log = client.get("/api/v1/models/lenet1/logs").text
    assert "fake model job" in log and "KDIGITS_EVENT" in log
    phases = [t["phase"] for t in client.get("/api/v1/models/lenet1/history").json()]
    assert phases[0] == "Pending" and phases[-1] == "Succeeded" and "Running" in phases
    metrics = client.get("/metrics").text
    assert 'kdigits_training_loss{model="lenet1",split="train"} 0.333' in metrics
    assert 'kdigits_training_accuracy{model="lenet1",split="val"} 0.53' in metrics
    assert 'kdigits_training_epoch{model="lenet1"} 3.0' in metrics
    assert 'kdigits_dataset_images{dataset="digits",split="train"} 80.0' in metrics
    assert 'kdigits_job_submissions_total{kind="model"} 1.0' in metrics
    assert 'kdigits_jobs{kind="model",phase="Succeeded"} 1.0' in metrics
    assert 'kdigits_job_duration_seconds_count{kind="model"} 1.0' in metrics

    # delete: the Ray jobs and the stored artifacts go too
    assert client.delete("/api/v1/datasets/digits").status_code == 409
    uid = m["metadata"]["uid"]
    assert client.delete("/api/v1/models/lenet1").status_code == 200
    wait_for(client, "/api/v1/models/lenet1", lambda o: "metadata" not in o)
    assert services.backend.info(submission_id("model", uid, 1)) is None
    assert services.objects.list(f"models/{uid}/") == []
    assert 'model="lenet1"' not in client.get("/metrics").text
    assert client.delete("/api/v1/datasets/digits").status_code == 200


def test_retry_then_success_and_permanent_failure(client: TestClient, services: Services) -> None:
    dataset(
        client, services.settings, "bad", **{"report-failure": "no_images_found", "exit-code": "2"}
    )
    dataset(client, services.settings, "good")
    m = model(client, "flaky", "good", epochs="1", sleep="0.1", **{"fail-attempts": "1"})
    model(client, "orphan", "bad")
    bad = wait_for(client, "/api/v1/datasets/bad", finished)["status"]
    assert bad["phase"] == "Failed" and bad["message"] == "no images found"
    assert bad["attempt"] == 1  # exit code 2: bad input is not retried
    orphan = wait_for(client, "/api/v1/models/orphan", finished)["status"]
    assert orphan["phase"] == "Failed"
    assert orphan["message"] == 'dataset "bad" failed: no images found'
    flaky = wait_for(client, "/api/v1/models/flaky", finished)["status"]
    assert flaky["phase"] == "Succeeded" and flaky["attempt"] == 2, flaky
    history = client.get("/api/v1/models/flaky/history").json()
    assert any("simulated crash" in t["message"] for t in history), history
    uid = m["metadata"]["uid"]
    ids = services.backend.list_ids(f"kdigits-model-{uid}")
    assert ids == [submission_id("model", uid, 1), submission_id("model", uid, 2)]
    assert "simulated crash" in client.get("/api/v1/models/flaky/logs", params={"attempt": 1}).text


def test_abort_and_queue_limit(client: TestClient, services: Services) -> None:
    services.settings.max_running_jobs = 1
    dataset(client, services.settings, "d")
    wait_for(client, "/api/v1/datasets/d", finished)
    model(client, "slow", "d", epochs="60", sleep="0.5")
    model(client, "next", "d", epochs="1", sleep="0.1")
    wait_for(client, "/api/v1/models/slow", lambda o: o["status"].get("epoch", 0) >= 1)
    waiting = client.get("/api/v1/models/next").json()["status"]
    assert waiting["phase"] == "Queued"
    assert waiting["waitingFor"] == "a free job slot (1 of 1 running)"
    r = client.post("/api/v1/models/slow/abort")
    assert r.status_code == 200
    slow = wait_for(client, "/api/v1/models/slow", finished, timeout=60)["status"]
    assert slow["phase"] == "Aborted" and slow["message"] == "aborted"
    assert services.backend.info(slow["submissionId"]).status == "STOPPED"  # type: ignore[union-attr]
    assert client.post("/api/v1/models/slow/abort").status_code == 409
    nxt = wait_for(client, "/api/v1/models/next", finished)["status"]
    assert nxt["phase"] == "Succeeded"


def test_restart_never_submits_twice(fake_settings: Settings) -> None:
    """A controller stopped mid-job and a new one on the same store: one Ray job, full status."""
    first = fake_services(fake_settings)
    with TestClient(create_app(services=first), client=LOCAL) as c:
        dataset(c, fake_settings, "d")
        m = model(c, "long", "d", epochs="8", sleep="0.5")
        wait_for(c, "/api/v1/models/long", lambda o: o["status"].get("epoch", 0) >= 2)
    # the first controller is gone (its thread stopped); the job runs on in Ray
    second = fake_services(Settings(**fake_settings.model_dump()))
    with TestClient(create_app(services=second), client=LOCAL) as c:
        assert 'kdigits_training_epoch{model="long"}' in c.get("/metrics").text
        done = wait_for(c, "/api/v1/models/long", finished)["status"]
        assert done["phase"] == "Succeeded" and done["attempt"] == 1
        assert done["epoch"] == 8 and len(done["snapshots"]) == 8
        series = {s["key"]: s for s in c.get("/api/v1/models/long/metrics").json()["series"]}
        assert [p["epoch"] for p in series["trainLoss"]["points"]] == list(range(1, 9))
        uid = m["metadata"]["uid"]
        assert second.backend.list_ids(f"kdigits-model-{uid}") == [submission_id("model", uid, 1)]
        assert 'kdigits_training_epoch{model="long"} 8.0' in c.get("/metrics").text
