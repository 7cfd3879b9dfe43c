"""Prometheus collectors with DESIGN.md's names (prefix `kdigits_`), in a registry of our own.

`jobs{kind,phase}` is read from the job store at each scrape, so it is right after a restart;
the training and dataset gauges are rebuilt from stored status at start and then follow the
event lines the reconciler tails. HTTP request metrics are recorded by `HttpMetricsMiddleware`
with the route template (not the raw path) as the label.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.specs import Phase

disable_created_metrics()  # no `_created` series: half the lines, nothing a dashboard uses

PREFIX = "kdigits"
JOB_KINDS = ("dataset", "model")
SPLITS = ("train", "val", "test")
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def metric_key(name: str, split: str | None) -> str:
    """Status key for a metric event: ("loss", "train") -> "trainLoss"."""
    parts = ([split] if split else []) + [p for p in re.split(r"[_\s]+", name) if p]
    if not parts:
        return name
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def split_metric_key(key: str) -> tuple[str, str | None]:
    """The inverse of metric_key: "valAccuracy" -> ("accuracy", "val")."""
    for split in SPLITS:
        if key.startswith(split) and key[len(split) : len(split) + 1].isupper():
            rest = key[len(split) :]
            return re.sub(r"(?<!^)([A-Z])", r"_\1", rest).lower(), split
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower(), None


class _JobsCollector(Collector):
    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            f"{PREFIX}_jobs", "Datasets and models by phase", labels=["kind", "phase"]
        )
        counts = {(k.lower(), p): n for (k, p), n in self._counts().items()}
        for kind in JOB_KINDS:
            for phase in Phase:
                family.add_metric([kind, phase.value], counts.get((kind, phase.value), 0))
        yield family


class Metrics:
    def __init__(self, counts: Callable[[], Mapping[tuple[str, str], int]] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        if counts is not None:
            r.register(_JobsCollector(counts))
        self.job_submissions = Counter(
            f"{PREFIX}_job_submissions", "Ray job submissions", ["kind"], registry=r
        )
        self.job_duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Wall time of finished jobs, first start to completion",
            ["kind"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.training_loss = Gauge(
            f"{PREFIX}_training_loss", "Latest loss", ["model", "split"], registry=r
        )
        self.training_accuracy = Gauge(
            f"{PREFIX}_training_accuracy", "Latest accuracy", ["model", "split"], registry=r
        )
        self.training_learning_rate = Gauge(
            f"{PREFIX}_training_learning_rate", "Current learning rate", ["model"], registry=r
        )
        self.training_epoch = Gauge(
            f"{PREFIX}_training_epoch", "Current epoch", ["model"], registry=r
        )
        self.training_images_per_second = Gauge(
            f"{PREFIX}_training_images_per_second",
            "Training throughput",
            ["model"],
            registry=r,
        )
        self.dataset_images = Gauge(
            f"{PREFIX}_dataset_images", "Images per split", ["dataset", "split"], registry=r
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors",
            "Reconcile passes, object actions or operator handlers that failed",
            registry=r,
        )
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Duration of one reconcile pass over every object",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            f"{PREFIX}_inference_latency_seconds",
            "Classification latency",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_request_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        for kind in JOB_KINDS:
            self.job_submissions.labels(kind)
            self.job_duration.labels(kind)  # at 0 from the start, so increase() sees the first job

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ models

    def set_model_metric(self, model: str, name: str, split: str | None, value: Any) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return
        split = split or "train"
        if name == "loss":
            self.training_loss.labels(model, split).set(value)
        elif name == "accuracy":
            self.training_accuracy.labels(model, split).set(value)
        elif name in ("lr", "learning_rate"):
            self.training_learning_rate.labels(model).set(value)
        elif name == "images_per_second":
            self.training_images_per_second.labels(model).set(value)
        elif name == "epoch":
            self.training_epoch.labels(model).set(value)

    def set_model_status(self, model: str, epoch: float, metrics: Mapping[str, float]) -> None:
        """Rebuild a model's gauges from its stored status."""
        self.training_epoch.labels(model).set(epoch)
        for key, value in metrics.items():
            name, split = split_metric_key(key)
            self.set_model_metric(model, name, split, value)

    def forget_model(self, model: str) -> None:
        for gauge in (self.training_loss, self.training_accuracy):
            for split in SPLITS:
                _remove(gauge, model, split)
        for gauge in (
            self.training_learning_rate,
            self.training_epoch,
            self.training_images_per_second,
        ):
            _remove(gauge, model)

    # ------------------------------------------------------------------ datasets

    def set_dataset_images(self, dataset: str, images: Mapping[str, int]) -> None:
        for split, count in images.items():
            self.dataset_images.labels(dataset, split).set(count)

    def forget_dataset(self, dataset: str) -> None:
        for split in SPLITS:
            _remove(self.dataset_images, dataset, split)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


class HttpMetricsMiddleware:
    """ASGI middleware: request count and latency by method, route template and status."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            labels = (scope.get("method", ""), path, str(status["code"]))
            self.metrics.http_requests.labels(*labels).inc()
            self.metrics.http_request_duration.labels(*labels).observe(time.perf_counter() - start)
