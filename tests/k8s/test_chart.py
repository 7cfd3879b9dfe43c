"""The Helm chart: lint-clean, and every rendered object valid for the API server that gets it.

Rendering uses Helm's own Go library (helm_python); core kinds are checked with
kubernetes-validate, the RayCluster, ServiceMonitor and PrometheusRule against the KubeRay and
Prometheus Operator CRDs in ../shared/schemas/ (jsonschema).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from controller.settings import Settings
from tests.conftest import require
from tests.k8s.chart import (
    CHART,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    env_of,
    of_kind,
    one,
    pod_specs,
    render,
    render_raw,
    strip,
)
from tests.k8s.openapi import REPO, SHARED_SCHEMAS, error_paths, shared_validator

THIRD_PARTY = {
    ("ray.io/v1", "RayCluster"): "ray.io_rayclusters.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}
CORE_GROUPS = {"v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"}
SCENARIO_IDS = list(SCENARIOS)


@functools.cache
def _third_party_validator(filename: str) -> jsonschema.Draft4Validator:
    path = SHARED_SCHEMAS / filename
    require(path.is_file(), f"{path} not found")
    return shared_validator(filename, "v1")


def _objects(scenario: str) -> list[dict[str, Any]]:
    return render(SCENARIOS[scenario])


def _controller(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _names(objects: list[dict[str, Any]], kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in of_kind(objects, kind)}


# ------------------------------------------------------------------ lint and validity


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_lint_is_clean(scenario: str) -> None:
    report = helm_python.lint(CHART, SCENARIOS[scenario], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert report["messages"] == []


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_every_object_is_valid(scenario: str) -> None:
    objects = _objects(scenario)
    assert objects
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        where = f"{obj['__template__']}: {obj['kind']}/{obj['metadata']['name']}"
        if key in THIRD_PARTY:
            errors = error_paths(_third_party_validator(THIRD_PARTY[key]), strip(obj))
            assert errors == [], where
        else:
            assert obj["apiVersion"] in CORE_GROUPS, f"unexpected kind in {where}"
            version = kubernetes_validate.latest_version()
            kubernetes_validate.validate(strip(obj), version, strict=True)


def test_invalid_objects_are_caught() -> None:
    """The checks above can fail: a misspelt field fails each kind of validation."""
    objects = _objects("monitoring")
    ray = strip(one(objects, "RayCluster"))
    ray["spec"]["headGroupSpec"]["rayStartParam"] = {}
    assert error_paths(_third_party_validator(THIRD_PARTY[("ray.io/v1", "RayCluster")]), ray)
    monitor = strip(one(objects, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "1s"
    key = ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert error_paths(_third_party_validator(THIRD_PARTY[key]), monitor)
    deployment = strip(one(objects, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_every_object_is_labelled_and_placed(scenario: str) -> None:
    for obj in _objects(scenario):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, obj["__template__"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm"
        cluster_scoped = obj["kind"] in ("ClusterRole", "ClusterRoleBinding")
        assert ("namespace" in obj["metadata"]) != cluster_scoped, obj["__template__"]


def test_one_resource_per_template() -> None:
    for path, text in render_raw(SCENARIOS["monitoring"]).items():
        if not path.endswith("NOTES.txt"):
            assert len([d for d in yaml.safe_load_all(text) if d]) <= 1, path


# ------------------------------------------------------------------ security and resources


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_every_container_is_locked_down(scenario: str) -> None:
    seen = 0
    for obj in _objects(scenario):
        for where, pod in pod_specs(obj):
            pod_ctx = pod.get("securityContext", {})
            assert pod_ctx.get("runAsNonRoot") is True, where
            assert pod_ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, where
            for container in pod["containers"]:
                seen += 1
                ctx = container.get("securityContext", {})
                name = f"{where}/{container['name']}"
                assert ctx.get("readOnlyRootFilesystem") is True, name
                assert ctx.get("allowPrivilegeEscalation") is False, name
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], name
                assert ctx.get("runAsNonRoot") is True, name
                assert ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
                assert container.get("resources", {}).get("requests"), f"{name} has no requests"
                mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
                assert "/tmp" in mounts, f"{name}: a read-only root needs a writable /tmp"
    assert seen >= 2


# ------------------------------------------------------------------ the controller


def test_controller_deployment() -> None:
    objects = _objects("default")
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = _controller(objects)
    assert container["command"] == ["kdigits"]
    assert container["args"][:3] == ["serve", "--host", "0.0.0.0"]
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("http", 5000)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    assert services[RELEASE]["spec"]["ports"][0]["targetPort"] == "http"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] in _names(objects, "ServiceAccount")


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_controller_settings_are_ones_it_reads(scenario: str) -> None:
    """Every KDIGITS_ variable the chart sets is a field of controller.settings.Settings."""
    env = env_of(_controller(_objects(scenario)))
    fields = {f"KDIGITS_{name.upper()}" for name in Settings.model_fields}
    ours = {name for name in env if name.startswith("KDIGITS_")}
    assert ours <= fields, ours - fields
    assert {"KDIGITS_HOME", "KDIGITS_RAY_ADDRESS", "KDIGITS_STORE_URL"} <= ours


def test_settings_values_reach_the_environment() -> None:
    env = env_of(_controller(_objects("minimal")))
    assert env["KDIGITS_DATA_ROOTS"] == "/data:/datasets"
    assert env["KDIGITS_ALLOWED_URL_HOSTS"] == "a.org,b"
    assert env["KDIGITS_TOKEN"] == {"secretKeyRef": {"name": "kdigits-token", "key": "token"}}
    assert env["KDIGITS_RECONCILE_INTERVAL"] == "1"
    assert "KDIGITS_TOKEN" not in env_of(_controller(_objects("default")))


@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_references_resolve(scenario: str) -> None:
    """Services select pods, and Secrets and ServiceAccounts exist or were named as existing."""
    objects = _objects(scenario)
    values = SCENARIOS[scenario]
    existing = {
        values.get("storage", {}).get("s3", {}).get("existingSecret"),
        values.get("controller", {}).get("auth", {}).get("existingSecret"),
    }
    secrets = _names(objects, "Secret") | existing
    pod_labels = [
        obj["spec"]["template"]["metadata"]["labels"]
        for obj in objects
        if "template" in obj.get("spec", {})
    ]
    for service in of_kind(objects, "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), service["metadata"]
    for obj in objects:
        for where, pod in pod_specs(obj):
            for container in pod["containers"]:
                for value in env_of(container).values():
                    if isinstance(value, dict) and "secretKeyRef" in value:
                        assert value["secretKeyRef"]["name"] in secrets, where
    for binding in of_kind(objects, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in _names(objects, "ClusterRole")
        for subject in binding["subjects"]:
            assert subject["name"] in _names(objects, "ServiceAccount")


# ------------------------------------------------------------------ RBAC


def _rbac_file(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((REPO / "k8s" / "rbac" / name).read_text())
    return obj


def test_chart_rbac_matches_k8s_rbac() -> None:
    roles = {o["metadata"]["name"]: o for o in of_kind(_objects("default"), "ClusterRole")}
    assert (
        roles[f"{RELEASE}-controller"]["rules"]
        == _rbac_file("controller-clusterrole.yaml")["rules"]
    )
    for suffix in ("view", "edit"):
        plain = _rbac_file(f"kdigits-{suffix}.yaml")
        rendered = roles[f"{RELEASE}-{suffix}"]
        assert rendered["rules"] == plain["rules"]
        aggregate = {k: v for k, v in plain["metadata"]["labels"].items() if "aggregate" in k}
        assert aggregate.items() <= rendered["metadata"]["labels"].items()


def test_k8s_rbac_files_are_valid() -> None:
    files = sorted((REPO / "k8s" / "rbac").glob("*.yaml"))
    assert len(files) >= 5
    for path in files:
        kubernetes_validate.validate(
            yaml.safe_load(path.read_text()), kubernetes_validate.latest_version(), strict=True
        )


def test_controller_may_do_what_the_design_needs() -> None:
    rules = _rbac_file("controller-clusterrole.yaml")["rules"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(
            group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
            for r in rules
        )

    for plural in ("datasets", "models", "pretrainedmodels"):
        assert allowed("kdigits.io", plural, "watch")
        assert allowed("kdigits.io", plural, "create")
        assert allowed("kdigits.io", f"{plural}/status", "patch")
        assert allowed("kdigits.io", f"{plural}/finalizers", "update")
    assert allowed("", "events", "create")
    assert allowed("authentication.k8s.io", "tokenreviews", "create")
    assert allowed("authorization.k8s.io", "subjectaccessreviews", "create")
    assert allowed("coordination.k8s.io", "leases", "update")
    assert allowed("", "secrets", "get") and not allowed("", "secrets", "list")
    assert allowed("", "namespaces", "list")


def test_minimal_has_no_rbac_and_uses_the_named_service_account() -> None:
    objects = _objects("minimal")
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ServiceAccount")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-sa"


# ------------------------------------------------------------------ Ray


def _ray_version_in_dockerfile() -> str:
    match = re.search(r"^ARG RAY_VERSION=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert match
    return match.group(1)


def test_raycluster_has_head_cpu_and_gpu_groups() -> None:
    objects = _objects("default")
    cluster = one(objects, "RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["rayVersion"] == _ray_version_in_dockerfile()
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    assert gpu["minReplicas"] == 0 and gpu["replicas"] == 0 and gpu["maxReplicas"] >= 1
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    tolerated = {t["key"] for t in gpu["template"]["spec"].get("tolerations", [])}
    assert "nvidia.com/gpu" in tolerated
    (cpu_container,) = groups["cpu"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu_container["resources"].get("limits", {})
    image = _controller(objects)["image"]
    for _, pod in pod_specs(cluster):
        assert [c["image"] for c in pod["containers"]] == [image]
        env = env_of(pod["containers"][0])
        assert env["KDIGITS_STORE_URL"] == "s3://kdigits"
        assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == f"{RELEASE}-minio"
    head_ports = {
        p["containerPort"]
        for p in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert 8265 in head_ports
    address = env_of(_controller(objects))["KDIGITS_RAY_ADDRESS"]
    name = cluster["metadata"]["name"]
    assert address == f"http://{name}-head-svc.{NAMESPACE}.svc:8265"


def test_gpu_values() -> None:
    cluster = one(_objects("gpu"), "RayCluster")
    (group,) = cluster["spec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu" and group["maxReplicas"] == 8
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["containers"][0]["resources"]["limits"]["cpu"] == "4"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}


def test_existing_ray_address_means_no_raycluster() -> None:
    objects = _objects("ray-address")
    assert not of_kind(objects, "RayCluster")
    env = env_of(_controller(objects))
    assert env["KDIGITS_RAY_ADDRESS"] == SCENARIOS["ray-address"]["ray"]["address"]


def test_autoscaling_can_be_switched_off() -> None:
    spec = one(_objects("minimal"), "RayCluster")["spec"]
    assert spec["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in spec
    assert [g["groupName"] for g in spec["workerGroupSpecs"]] == ["cpu"]


# ------------------------------------------------------------------ storage


def test_minio_by_default() -> None:
    objects = _objects("default")
    statefulset = one(objects, "StatefulSet")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert statefulset["spec"]["serviceName"] in _names(objects, "Service")
    secret = one(objects, "Secret")
    assert set(secret["data"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    job = one(objects, "Job")
    assert "post-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    env = env_of(_controller(objects))
    endpoint = env["KDIGITS_S3_ENDPOINT"]
    assert endpoint == f"http://{RELEASE}-minio.{NAMESPACE}.svc:9000"
    assert f"{RELEASE}-minio" in _names(objects, "Service")
    job_env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert job_env["S3_ENDPOINT"] == endpoint and job_env["BUCKET"] == "kdigits"


def test_minio_password_given_or_generated() -> None:
    import base64

    given = one(_objects("minimal"), "Secret")["data"]["AWS_SECRET_ACCESS_KEY"]
    assert base64.b64decode(given).decode() == "s3cr3t-passw0rd"
    generated = base64.b64decode(
        one(_objects("default"), "Secret")["data"]["AWS_SECRET_ACCESS_KEY"]
    )
    assert len(generated) == 32
    volumes = one(_objects("minimal"), "StatefulSet")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "data", "emptyDir": {}} in volumes


def test_external_s3() -> None:
    objects = _objects("external-s3")
    assert not of_kind(objects, "StatefulSet") and not of_kind(objects, "Secret")
    assert not of_kind(objects, "Job")
    env = env_of(_controller(objects))
    assert env["KDIGITS_STORE_URL"] == "s3://ml-data/kdigits"
    assert env["KDIGITS_S3_ENDPOINT"] == "https://s3.example.com"
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "s3-keys"


def test_no_minio_uses_ambient_aws_credentials() -> None:
    objects = _objects("no-minio")
    env = env_of(_controller(objects))
    assert "KDIGITS_S3_ENDPOINT" not in env and "AWS_ACCESS_KEY_ID" not in env
    assert env["KDIGITS_STORE_URL"] == "s3://kdigits"
    account = one(objects, "ServiceAccount")
    assert "eks.amazonaws.com/role-arn" in account["metadata"]["annotations"]


# ------------------------------------------------------------------ monitoring


def test_monitoring_objects_only_when_enabled() -> None:
    assert not of_kind(_objects("default"), "ServiceMonitor")
    assert not of_kind(_objects("default"), "PrometheusRule")
    objects = _objects("monitoring")
    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    service = next(s for s in of_kind(objects, "Service") if s["metadata"]["name"] == RELEASE)
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    others = [s for s in of_kind(objects, "Service") if s is not service]
    for other in others:
        labels = other["metadata"]["labels"].items()
        assert not monitor["spec"]["selector"]["matchLabels"].items() <= labels
    rule = one(objects, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "KdigitsJobFailed",
        "KdigitsJobStuckQueued",
        "KdigitsControllerDown",
        "KdigitsReconcileErrors",
    }


def test_dashboards_configmap() -> None:
    objects = _objects("monitoring")
    configmap = next(
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-dashboards")
    )
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"]["grafana_folder"] == "kdigits"
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert {f"kdigits-{f.name}" for f in files} == set(configmap["data"])
    for path in files:
        assert json.loads(configmap["data"][f"kdigits-{path.name}"]) == json.loads(path.read_text())
    assert not of_kind(_objects("minimal"), "ConfigMap")


# ------------------------------------------------------------------ CRDs, values, NOTES


def test_chart_ships_the_generated_crds() -> None:
    chart = helm_python.Chart.load(CHART)
    names = sorted(Path(c["name"]).name for c in chart.crds)
    assert names == sorted(p.name for p in (REPO / "k8s" / "crds").glob("*.yaml"))
    assert len(names) == 3


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"controller": {"replicas": 2}}, "/controller/replicas"),
        ({"controller": {"port": "5000"}}, "/controller/port"),
        ({"ray": {"gpuWorkers": {"gpusPerWorker": 0}}}, "/ray/gpuWorkers/gpusPerWorker"),
        ({"ray": {"address": "raycluster:8265"}}, "/ray/address"),
        ({"storage": {"bucket": "Bad_Bucket"}}, "/storage/bucket"),
        ({"minio": {"rootPassword": "short"}}, "/minio/rootPassword"),
        ({"metrics": {"prometheusRule": {"failedWindow": "15 minutes"}}}, "failedWindow"),
        ({"controler": {}}, "controler"),
    ],
)
def test_values_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(where)):
        render_raw(values)


def test_every_value_is_commented() -> None:
    """Each key of values.yaml has a comment line right above it.

    Keys are the sections and values of values.schema.json; the content of a value that is a
    map (resources, probes, nodeSelector) is not.
    """
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key in stack] + [match.group(2)]
        stack.append((indent, match.group(2)))
        node: Any = schema
        for key in path:
            if node is not None and "description" in node and node is not schema:
                node = None  # inside a documented value (resources, probes, tolerations...)
            node = node.get("properties", {}).get(key) if isinstance(node, dict) else None
        if node is None:
            continue
        if not lines[number - 1].lstrip().startswith("#"):
            undocumented.append(".".join(path))
    assert undocumented == []


def test_values_yaml_and_schema_agree() -> None:
    chart = helm_python.Chart.load(CHART)
    chart.validate_schema({})
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart.values == defaults


def test_notes_render_for_every_scenario() -> None:
    for values in SCENARIOS.values():
        notes = next(t for p, t in render_raw(values).items() if p.endswith("NOTES.txt"))
        assert "kubectl get models" in notes and "{{" not in notes
