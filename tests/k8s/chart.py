"""Render charts/kdigits with Helm's own Go library (helm_python) into Kubernetes objects.

The value sets below are the installations the chart supports: the default (MinIO and a
KubeRay cluster with CPU and GPU worker groups), GPU-heavy, external S3, AWS S3 without MinIO,
an existing Ray cluster, Prometheus Operator monitoring, and everything optional switched off.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import yaml

from tests.k8s.openapi import REPO

CHART = REPO / "charts" / "kdigits"
RELEASE = "kdigits"
NAMESPACE = "kdigits"

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {
        "ray": {
            "cpuWorkers": {"enabled": False},
            "gpuWorkers": {
                "replicas": 1,
                "minReplicas": 0,
                "maxReplicas": 8,
                "gpusPerWorker": 2,
                "nodeSelector": {"nvidia.com/gpu.present": "true"},
            },
        },
    },
    "external-s3": {
        "minio": {"enabled": False},
        "storage": {
            "bucket": "ml-data",
            "prefix": "/kdigits/",
            "s3": {"endpoint": "https://s3.example.com", "existingSecret": "s3-keys"},
        },
    },
    "no-minio": {
        "minio": {"enabled": False},
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/kd"}
        },
    },
    "ray-address": {"ray": {"address": "http://raycluster-head-svc.ray.svc:8265"}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "prometheusRule": {"enabled": True, "alertLabels": {"team": "ml"}},
            "dashboards": {"namespace": "monitoring"},
        },
    },
    "minimal": {
        "rbac": {"create": False, "aggregateToDefaultRoles": False},
        "serviceAccount": {"create": False, "name": "existing-sa"},
        "controller": {
            "auth": {"existingSecret": "kdigits-token"},
            "settings": {"dataRoots": ["/data", "/datasets"], "allowedUrlHosts": ["a.org", "b"]},
            "extraEnv": [{"name": "KDIGITS_RECONCILE_INTERVAL", "value": "1"}],
        },
        "ray": {"enableInTreeAutoscaling": False, "gpuWorkers": {"enabled": False}},
        "minio": {"persistence": {"enabled": False}, "rootPassword": "s3cr3t-passw0rd"},
        "metrics": {"dashboards": {"enabled": False}},
    },
}


@functools.cache
def _chart() -> Any:
    import helm_python

    return helm_python.Chart.load(CHART)


def render_raw(
    values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    rendered: dict[str, str] = _chart().render(values, name=name, namespace=namespace)
    return rendered


@functools.cache
def _render_cached(values_json: str, name: str, namespace: str) -> tuple[dict[str, Any], ...]:
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_raw(json.loads(values_json), name, namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", Path(path).name)
                objects.append(doc)
    return tuple(objects)


def render(
    values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE
) -> list[dict[str, Any]]:
    """Every object the chart renders; `__template__` names the template that made it."""
    objects = _render_cached(json.dumps(values, sort_keys=True), name, namespace)
    return [json.loads(json.dumps(o)) for o in objects]


def strip(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without our bookkeeping key, as the API server would receive it."""
    return {k: v for k, v in obj.items() if k != "__template__"}


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (obj,) = of_kind(objects, kind)
    return obj


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) of every pod template in a workload or RayCluster."""
    spec = obj.get("spec", {})
    if obj["kind"] == "RayCluster":
        found = [("head", spec["headGroupSpec"]["template"]["spec"])]
        found += [(g["groupName"], g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
        return found
    if "template" in spec:
        return [(obj["kind"], spec["template"]["spec"])]
    return []


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping) of a container's environment."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
