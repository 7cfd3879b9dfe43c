"""Prometheus collectors: DESIGN's names and labels, and `promtool check metrics` passes."""

from __future__ import annotations

import shutil
import subprocess

from controller.metrics import Metrics, metric_key, split_metric_key
from tests.conftest import require


def sample() -> str:
    metrics = Metrics(lambda: {("Model", "Running"): 2, ("Dataset", "Succeeded"): 1})
    metrics.set_model_status(
        "m", 3.0, {"trainLoss": 0.2, "valAccuracy": 0.9, "trainLearningRate": 0.01}
    )
    metrics.set_model_metric("m", "images_per_second", "train", 1234.0)
    metrics.set_dataset_images("d", {"train": 100, "val": 20})
    metrics.job_submissions.labels("model").inc()
    metrics.job_duration.labels("model").observe(42)
    metrics.reconcile_duration.observe(0.01)
    metrics.inference_latency.labels("m").observe(0.02)
    metrics.http_requests.labels("GET", "/api/v1/models/{name}", "200").inc()
    metrics.http_request_duration.labels("GET", "/api/v1/models/{name}", "200").observe(0.003)
    return metrics.render().decode()


def test_names_and_labels() -> None:
    text = sample()
    for line in (
        'kdigits_jobs{kind="model",phase="Running"} 2.0',
        'kdigits_jobs{kind="dataset",phase="Succeeded"} 1.0',
        'kdigits_jobs{kind="model",phase="Queued"} 0.0',
        'kdigits_job_submissions_total{kind="model"} 1.0',
        'kdigits_job_duration_seconds_count{kind="model"} 1.0',
        'kdigits_training_loss{model="m",split="train"} 0.2',
        'kdigits_training_accuracy{model="m",split="val"} 0.9',
        'kdigits_training_learning_rate{model="m"} 0.01',
        'kdigits_training_epoch{model="m"} 3.0',
        'kdigits_training_images_per_second{model="m"} 1234.0',
        'kdigits_dataset_images{dataset="d",split="train"} 100.0',
        "kdigits_reconcile_duration_seconds_count 1.0",
        'kdigits_inference_latency_seconds_count{model="m"} 1.0',
        'kdigits_http_requests_total{method="GET",route="/api/v1/models/{name}",status="200"} 1.0',
    ):
        assert line in text, line
    assert "kdigits_http_request_duration_seconds_bucket" in text


def test_forget() -> None:
    metrics = Metrics()
    metrics.set_model_status("m", 1.0, {"trainLoss": 0.5})
    metrics.set_dataset_images("d", {"train": 1})
    metrics.forget_model("m")
    metrics.forget_dataset("d")
    text = metrics.render().decode()
    assert 'model="m"' not in text and 'dataset="d"' not in text


def test_keys() -> None:
    assert metric_key("loss", "train") == "trainLoss"
    assert metric_key("images_per_second", "train") == "trainImagesPerSecond"
    assert split_metric_key("valAccuracy") == ("accuracy", "val")
    assert split_metric_key("trainLearningRate") == ("learning_rate", "train")


def test_promtool_check_metrics() -> None:
    promtool = shutil.which("promtool")
    require(promtool is not None, "promtool not installed (apt-get install prometheus)")
    proc = subprocess.run(
        [str(promtool), "check", "metrics"], input=sample(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
