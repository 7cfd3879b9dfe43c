"""Deletion never blocks forever: with Ray gone, the finalizer gives up after bounded retries,
cleans storage, posts a Warning Event and lets the object go; also for an object whose spec was
edited into one the contract refuses (kopf against kmock, no Ray). The one wait without a bound:
a PretrainedModel that unfinished models start from stays until they are done or gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client import ApiClient

from controller.operator.cluster import build_services
from controller.ray_local import free_port
from controller.services import Services
from controller.settings import Settings
from tests.operator.apiserver import RunningApiServer
from tests.operator.conftest import client_for
from tests.operator.helpers import apply, delete, events, get, patch_spec, phase, wait_for

NS = "team-x"


@pytest.fixture(scope="module")
def operator(
    apiserver: RunningApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    home = tmp_path_factory.mktemp("home")
    (home / "data" / "train" / "a").mkdir(parents=True)
    settings = Settings(
        home=home,
        ray_address=f"http://127.0.0.1:{free_port()}",  # nothing listens there: Ray is gone
        data_roots=str(home / "data"),
        reconcile_interval=0.3,
    )
    services = build_services(
        settings, client_for(apiserver.url), finalize_retries=3, finalize_delay=0.5
    )
    services.start()
    try:
        yield services
    finally:
        services.stop()


def _apply_running_dataset(operator: Services, kube: ApiClient, name: str) -> dict[str, Any]:
    """Apply a folder Dataset as kubectl would and wait until its attempt is recorded."""
    body = {
        "apiVersion": "kdigits.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {"source": {"folder": {"train": str(operator.settings.home_dir / "data/train")}}},
    }
    apply(kube, body, NS)
    return wait_for(
        lambda: get(kube, "Dataset", name, NS),
        lambda o: phase(o) == "Running",
        30,
        "the attempt to be recorded",
    )


def test_deletion_is_not_blocked_when_ray_is_gone(operator: Services, kube: ApiClient) -> None:
    home = operator.settings.home_dir
    # The reconciler records the attempt before submitting it: Running, with a Ray job id that
    # Ray never confirmed (it cannot be reached).
    running = _apply_running_dataset(operator, kube, "orphan")
    uid = running["metadata"]["uid"]
    assert running["metadata"]["finalizers"] == ["kdigits.io/finalizer"]
    prefix = home / "store" / "datasets" / uid
    assert (prefix / "spec.json").exists()
    delete(kube, "Dataset", "orphan", NS)
    wait_for(lambda: get(kube, "Dataset", "orphan", NS), lambda o: o is None, 30, "the release")
    assert not prefix.exists()
    forced = [e for e in events(kube, NS, "orphan") if e[1] == "FinalizerForced"]
    assert len(forced) == 1 and forced[0][0] == "Warning"
    assert "released after 3 tries" in forced[0][2]
    assert f"kdigits-dataset-{uid}-1" in forced[0][2]  # names the job it could not stop
    assert (operator.metrics.registry.get_sample_value("kdigits_reconcile_errors_total") or 0) > 0


def test_a_started_job_refuses_a_spec_the_contract_rejects(
    operator: Services, kube: ApiClient
) -> None:
    running = _apply_running_dataset(operator, kube, "edited")
    uid = running["metadata"]["uid"]
    patch_spec(kube, "Dataset", "edited", NS, {"split": {"valPercent": 60, "testPercent": 50}})
    refused = wait_for(
        lambda: get(kube, "Dataset", "edited", NS),
        lambda o: any(c["type"] == "SpecApplied" for c in o["status"]["conditions"]),
        30,
        "the edit to be refused",
    )
    spec_applied = next(c for c in refused["status"]["conditions"] if c["type"] == "SpecApplied")
    assert spec_applied["reason"] == "InvalidSpec"
    assert "valPercent + testPercent must be less than 100" in spec_applied["message"]
    assert refused["status"]["phase"] == "Running"  # the job keeps the spec it started with
    assert any(e[1] == "SpecChangeRefused" for e in events(kube, NS, "edited"))
    delete(kube, "Dataset", "edited", NS)
    wait_for(lambda: get(kube, "Dataset", "edited", NS), lambda o: o is None, 30, "the release")
    assert not (operator.settings.home_dir / "store" / "datasets" / uid).exists()
    forced = [e for e in events(kube, NS, "edited") if e[1] == "FinalizerForced"]
    assert forced and f"dataset {uid}" in forced[0][2]


def _cr(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "kdigits.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def test_a_pretrained_model_in_use_waits_for_its_models(
    operator: Services, kube: ApiClient
) -> None:
    """`kubectl delete` of a PretrainedModel that a waiting Model starts from cannot be refused
    (REST answers 409): it stays Terminating, saying why, past every finalize retry, and goes
    with its files once the model is gone."""
    home = operator.settings.home_dir
    train = str(home / "data" / "train")
    apply(kube, _cr("Dataset", "base", {"source": {"folder": {"train": train}}}), NS)
    pre = apply(kube, _cr("PretrainedModel", "pre", {"network": "lenet"}), NS)
    spec = {"dataset": "base", "network": {"pretrained": {"name": "pre"}}}
    apply(kube, _cr("Model", "tuned", spec), NS)
    wait_for(
        lambda: get(kube, "Model", "tuned", NS),
        lambda o: phase(o) == "Queued",
        30,
        "the model to wait for its dataset",
    )
    files = home / "store" / "pretrained" / pre["metadata"]["uid"]
    files.mkdir(parents=True)
    (files / "model.safetensors").write_bytes(b"weights")
    delete(kube, "PretrainedModel", "pre", NS)
    held = wait_for(
        lambda: get(kube, "PretrainedModel", "pre", NS),
        lambda o: (o.get("status") or {}).get("message", "").startswith("deletion waits"),
        30,
        "the deletion to be held",
    )
    assert held["status"]["message"] == "deletion waits for model(s) tuned to finish"
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"]
    time.sleep(3 * 0.5 * 3)  # well past finalize_retries x finalize_delay: never forced
    assert get(kube, "PretrainedModel", "pre", NS) is not None and files.exists()
    delete(kube, "Model", "tuned", NS)
    wait_for(lambda: get(kube, "PretrainedModel", "pre", NS), lambda o: o is None, 30, "release")
    assert not files.exists()
    delete(kube, "Dataset", "base", NS)
    wait_for(lambda: get(kube, "Dataset", "base", NS), lambda o: o is None, 30, "the release")
