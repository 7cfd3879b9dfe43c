"""The control plane end to end, over HTTP against `kdigits serve` on a real Ray head with the
real dataset and training jobs: create, wait, stats, metrics, logs, abort, delete, 409, 422,
kill -9 and restart, the CLI, schemathesis and promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from controller.ray_backend import RayBackend
from controller.ray_local import LocalRayHead
from tests.conftest import require
from tests.e2e.conftest import REPO, Server, lenet

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def promtool_check(text: str) -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    proc = subprocess.run(
        [str(promtool), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dataset(server: Server, digits_dataset: dict[str, Any]) -> None:
    status = digits_dataset["status"]
    assert status["images"]["train"] + status["images"]["val"] == 300
    assert status["images"]["val"] == 70 and status["classes"] == 10
    stats = server.get("/api/v1/datasets/digits/stats").json()
    assert stats["images"] == status["images"]
    mean = server.get("/api/v1/datasets/digits/mean")
    assert mean.status_code == 200 and mean.content.startswith(b"\x89PNG")
    assert "KDIGITS_EVENT" in server.get("/api/v1/datasets/digits/logs").text
    listed = server.get("/api/v1/datasets", params={"group": "e2e"}).json()["items"]
    assert [d["metadata"]["name"] for d in listed] == ["digits"]


def test_model_train_metrics_logs_delete(server: Server, digits_dataset: dict[str, Any]) -> None:
    r = server.post("/api/v1/models", json=lenet("lenet-a", epochs=2))
    assert r.status_code == 201, r.text
    # follow the log while it trains: the stream ends when the job does
    with server.http.stream(
        "GET", "/api/v1/models/lenet-a/logs", params={"follow": "true"}, timeout=300
    ) as stream:
        followed = "".join(stream.iter_text())
    assert '"kind":"done"' in followed
    done = server.wait_finished("/api/v1/models/lenet-a", timeout=60)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["epoch"] == 2 and status["progress"] == 1 and status["attempt"] == 1
    assert {"trainLoss", "valLoss", "valAccuracy"} <= set(status["metrics"])
    assert [s["epoch"] for s in status["snapshots"]] == [1, 2]
    metrics = server.get("/api/v1/models/lenet-a/metrics").json()
    series = {s["key"]: s for s in metrics["series"]}
    assert [p["epoch"] for p in series["valAccuracy"]["points"]] == [1, 2]
    assert series["trainLoss"]["points"][-1]["epoch"] == pytest.approx(2, abs=0.5)
    assert "KDIGITS_EVENT" in server.get("/api/v1/models/lenet-a/logs").text
    text = server.get("/metrics").text
    assert 'kdigits_training_loss{model="lenet-a",split="val"}' in text
    assert 'kdigits_training_accuracy{model="lenet-a",split="val"}' in text
    assert 'kdigits_training_epoch{model="lenet-a"} 2.0' in text
    assert 'kdigits_dataset_images{dataset="digits",split="train"} 230.0' in text
    assert 'kdigits_job_duration_seconds_count{kind="model"}' in text
    promtool_check(text)

    r = server.delete("/api/v1/datasets/digits")
    assert r.status_code == 409 and "lenet-a" in r.json()["reason"]
    uid = done["metadata"]["uid"]
    assert server.delete("/api/v1/models/lenet-a").status_code == 200
    server.wait_for("/api/v1/models/lenet-a", lambda o: "metadata" not in o, timeout=60)
    assert server.get("/api/v1/models/lenet-a").status_code == 404
    assert list((server.home / "store" / "models").glob(f"{uid}*")) == []


def test_abort_running_model(server: Server, digits_dataset: dict[str, Any]) -> None:
    assert server.post("/api/v1/models", json=lenet("lenet-abort", epochs=500)).status_code == 201
    server.wait_for(
        "/api/v1/models/lenet-abort", lambda o: o["status"].get("progress", 0) > 0, timeout=180
    )
    r = server.post("/api/v1/models/lenet-abort/abort")
    assert r.status_code == 200
    done = server.wait_finished("/api/v1/models/lenet-abort", timeout=90)
    assert done["status"]["phase"] == "Aborted"
    assert 0 < done["status"]["progress"] < 1
    assert server.post("/api/v1/models/lenet-abort/abort").status_code == 409
    assert server.delete("/api/v1/models/lenet-abort").status_code == 200


def test_kill9_and_restart(
    server: Server, digits_dataset: dict[str, Any], ray_head: LocalRayHead
) -> None:
    epochs = 6
    r = server.post("/api/v1/models", json=lenet("lenet-crash", epochs=epochs))
    assert r.status_code == 201
    uid = r.json()["metadata"]["uid"]
    server.wait_for(
        "/api/v1/models/lenet-crash", lambda o: o["status"].get("epoch", 0) >= 1, timeout=180
    )
    server.kill9()
    server.start()
    done = server.wait_finished("/api/v1/models/lenet-crash", timeout=240)
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["attempt"] == 1 and status["epoch"] == epochs
    assert len(status["snapshots"]) == epochs
    ray = RayBackend(ray_head.dashboard_url)
    assert ray.list_ids(f"kdigits-model-{uid}") == [f"kdigits-model-{uid}-1"]  # once only
    series = {
        s["key"]: s for s in server.get("/api/v1/models/lenet-crash/metrics").json()["series"]
    }
    assert [p["epoch"] for p in series["valAccuracy"]["points"]] == list(range(1, epochs + 1))
    text = server.get("/metrics").text
    assert f'kdigits_training_epoch{{model="lenet-crash"}} {float(epochs)}' in text
    assert 'kdigits_jobs{kind="model",phase="Succeeded"}' in text
    promtool_check(text)


def test_bad_inputs(server: Server, digits_dataset: dict[str, Any], digits_dir: Any) -> None:
    cases = [
        ("/api/v1/datasets", {"metadata": {"name": "x"}, "spec": {"source": {}}}, "spec.source"),
        (
            "/api/v1/datasets",
            {"metadata": {"name": "x"}, "spec": {"source": {"folder": {"train": "/etc"}}}},
            "spec.source.folder.train",
        ),
        ("/api/v1/models", lenet("UPPER", 1), "metadata.name"),
        ("/api/v1/models", lenet("x", 0), "spec.training.epochs"),
        (
            "/api/v1/models",
            {**lenet("x", 1), "spec": {**lenet("x", 1)["spec"], "dataset": "nope"}},
            "spec.dataset",
        ),
        (
            "/api/v1/models",
            {**lenet("x", 1), "spec": {**lenet("x", 1)["spec"], "network": {"standard": "nonet"}}},
            "spec.network.standard",
        ),
    ]
    for path, body, field in cases:
        r = server.post(path, json=body)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["field"] == field, r.json()
    assert server.get("/api/v1/models/none-such").status_code == 404


def test_cli(server: Server, digits_dataset: dict[str, Any]) -> None:
    env = {**server.env, "KDIGITS_URL": server.url}
    run = [sys.executable, "-m", "controller"]
    out = subprocess.run(
        [*run, "dataset", "list", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert [d["metadata"]["name"] for d in json.loads(out.stdout)] == ["digits"]
    out = subprocess.run(
        [*run, "model", "create", "cli-bad", "--dataset", "digits", "--network", "nonet"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 1 and "spec.network.standard" in out.stderr


def test_schemathesis(server: Server, digits_dataset: dict[str, Any], tmp_path: Any) -> None:
    """No 5xx and no response that breaks the OpenAPI schema, on a bounded random sample."""
    proc = subprocess.run(
        [
            str(REPO / ".venv/bin/schemathesis")
            if (REPO / ".venv/bin/schemathesis").exists()
            else "schemathesis",
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,"
            "content_type_conformance",
            "--max-examples",
            "5",
            "--workers",
            "1",
            "--exclude-method",
            "DELETE",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # schemathesis keeps a .schemathesis/ cache in its working directory
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert server.get("/api/v1/datasets/digits").status_code == 200
