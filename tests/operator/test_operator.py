"""The kopf operator against kmock's API server and a real local Ray head, driven like kubectl:
the example Dataset and Model CRs run real Ray jobs and get status, conditions,
observedGeneration and Events back; a restart mid-run submits nothing twice; a spec change to a
running model is refused; deletion stops the Ray job and cleans storage; bad specs fail with a
message (in another namespace: the operator serves them all)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from controller.operator.cluster import build_services
from controller.ray_backend import RayBackend
from controller.ray_local import LocalRayHead
from controller.services import Services
from controller.settings import Settings
from tests.operator.apiserver import RunningApiServer
from tests.operator.conftest import client_for
from tests.operator.helpers import (
    apply,
    delete,
    events,
    example,
    get,
    patch_spec,
    phase,
    wait_for,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]

A, B = "team-a", "team-b"
TERMINAL = ("Succeeded", "Failed", "Aborted")


class Controller:
    """`kdigits serve --kubernetes` minus HTTP: the cluster-mode services, restartable."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.services: Services | None = None

    def start(self) -> Services:
        settings = self.settings.model_copy()
        self.services = build_services(
            settings, client_for(self.url), finalize_retries=20, progress_interval=1.0
        )
        self.services.start()
        return self.services

    def stop(self) -> None:
        if self.services is not None:
            self.services.stop()
            self.services = None

    def restart(self) -> Services:
        self.stop()
        return self.start()


@pytest.fixture(scope="module")
def controller(
    apiserver: RunningApiServer,
    ray_head: LocalRayHead,
    mnist_folder: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Controller]:
    home = tmp_path_factory.mktemp("home")
    settings = Settings(
        home=home,
        ray_address=ray_head.dashboard_url,
        data_roots=f"{mnist_folder}:{home}",
        reconcile_interval=0.3,
        max_running_jobs=3,
    )
    running = Controller(apiserver.url, settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def ray(ray_head: LocalRayHead) -> RayBackend:
    return RayBackend(ray_head.dashboard_url)


def mnist_dataset(folder: Path) -> dict[str, Any]:
    """The MNIST example, with its MinIO prefix swapped for the same layout in a local folder."""
    body = example("dataset-mnist.yaml")
    body["spec"]["source"] = {"folder": {"train": str(folder / "train")}}
    body["spec"]["split"]["seed"] = 1
    return body


def lenet(epochs: int, name: str | None = None) -> dict[str, Any]:
    """The LeNet example, shortened to `epochs`."""
    body = example("model-lenet.yaml")
    body["spec"]["training"]["epochs"] = epochs
    if name:
        body["metadata"]["name"] = name
    return body


@pytest.fixture(scope="module")
def dataset(controller: Controller, kube: ApiClient, mnist_folder: Path) -> dict[str, Any]:
    """The example Dataset, applied in team-a and built by a real Ray job."""
    apply(kube, mnist_dataset(mnist_folder), A)
    done: dict[str, Any] = wait_for(
        lambda: get(kube, "Dataset", "mnist", A),
        lambda o: phase(o) in TERMINAL,
        180,
        "the mnist dataset",
    )
    return done


def ray_ids(ray: RayBackend, kind: str, uid: str) -> list[str]:
    return ray.list_ids(prefix=f"kdigits-{kind}-{uid}-")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def test_bad_specs_fail_with_a_message(
    controller: Controller, kube: ApiClient, ray: RayBackend, tmp_path: Path
) -> None:
    """What only the controller can tell: each ends Failed with the field and the reason."""
    outside = tmp_path / "train"  # exists, but outside KDIGITS_DATA_ROOTS
    (outside / "a").mkdir(parents=True)
    escape = example("dataset-mnist.yaml")
    escape["metadata"]["name"] = "escape"
    escape["spec"]["source"] = {"folder": {"train": str(outside)}}
    split = example("dataset-mnist.yaml")
    split["metadata"]["name"] = "split"
    split["spec"]["source"] = {"folder": {"train": str(outside)}}
    split["spec"]["split"].update(valPercent=60, testPercent=50)  # fine for the CRD schema
    orphan = lenet(1, "orphan")
    orphan["spec"]["dataset"] = "nope"
    cases = [
        ("Dataset", escape, "spec.source.folder.train", "outside the data roots"),
        ("Dataset", split, "spec.split", "valPercent + testPercent must be less than 100"),
        ("Model", orphan, "spec.dataset", 'dataset "nope" does not exist'),
    ]
    for _kind, body, _, _ in cases:
        apply(kube, body, B)
    for kind, body, field, reason in cases:
        name = body["metadata"]["name"]
        failed = wait_for(
            lambda k=kind, n=name: get(kube, k, n, B),  # type: ignore[misc]
            lambda o: phase(o) in TERMINAL,
            30,
            f"{kind} {name} to fail",
        )
        status = failed["status"]
        assert status["phase"] == "Failed", status
        assert status["message"].startswith(field) and reason in status["message"], status
        ready = condition(failed, "Ready")
        assert ready["status"] == "False" and reason in ready["message"]
        assert status["observedGeneration"] == failed["metadata"]["generation"] == 1
        warning = [e for e in events(kube, B, name) if e[:2] == ("Warning", "Failed")]
        assert warning and reason in warning[0][2]
        assert ray_ids(ray, kind.lower(), failed["metadata"]["uid"]) == []  # nothing ran


def test_examples_run_real_jobs_across_a_restart(
    controller: Controller, kube: ApiClient, ray: RayBackend, dataset: dict[str, Any]
) -> None:
    status = dataset["status"]
    assert status["phase"] == "Succeeded", status
    assert status["images"]["train"] + status["images"]["val"] == 300
    assert status["images"]["val"] == 30  # the example's valPercent: 10
    assert status["classes"] == 10 and status["progress"] == 1
    assert status["observedGeneration"] == dataset["metadata"]["generation"] == 1
    assert condition(dataset, "Ready")["status"] == "True"
    assert dataset["metadata"]["finalizers"] == ["kdigits.io/finalizer"]
    reasons = [e[1] for e in events(kube, A, "mnist")]
    assert {"Running", "Succeeded"} <= set(reasons), reasons

    model = apply(kube, lenet(epochs=2), A)
    uid = model["metadata"]["uid"]
    running = wait_for(
        lambda: get(kube, "Model", "mnist-lenet", A),
        lambda o: phase(o) == "Running" and ray.info(o["status"]["submissionId"]) is not None,
        120,
        "the model's Ray job",
    )
    assert running["status"]["attempt"] == 1

    controller.restart()  # a new reconciler and a new kopf: they must re-attach, not resubmit

    patch_spec(kube, "Model", "mnist-lenet", A, {"training": {"epochs": 3}})
    refused = wait_for(
        lambda: get(kube, "Model", "mnist-lenet", A),
        lambda o: any(c["type"] == "SpecApplied" for c in o["status"].get("conditions", [])),
        60,
        "the spec change to be refused",
    )
    refusal = condition(refused, "SpecApplied")
    # Running unless 2 tiny epochs beat the restart (a fast machine): refused either way.
    assert refusal["reason"] in ("RefusedWhileRunning", "RefusedAfterFinish"), refusal
    assert "generation 2" in refusal["message"] and "generation 1" in refusal["message"]
    assert refused["metadata"]["generation"] == 2 and refused["status"]["observedGeneration"] == 1
    assert any(e[:2] == ("Warning", "SpecChangeRefused") for e in events(kube, A, "mnist-lenet"))

    done = wait_for(
        lambda: get(kube, "Model", "mnist-lenet", A),
        lambda o: phase(o) in TERMINAL,
        300,
        "the model to finish",
    )
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert status["epoch"] == 2 and status["progress"] == 1  # trained as started, not as edited
    assert {"trainLoss", "valLoss", "valAccuracy"} <= set(status["metrics"])
    assert [s["epoch"] for s in status["snapshots"]] == [1, 2]
    assert status["attempt"] == 1 and status["observedGeneration"] == 1
    assert condition(done, "Ready")["status"] == "True"
    history = [h["phase"] for h in status["history"]]
    assert history[-1] == "Succeeded" and "Running" in history
    reasons = [e[1] for e in events(kube, A, "mnist-lenet")]
    assert "Running" in reasons and "Succeeded" in reasons

    # One Ray submission per attempt, across the restart, for every job of this run.
    assert ray_ids(ray, "model", uid) == [f"kdigits-model-{uid}-1"]
    dataset_uid = dataset["metadata"]["uid"]
    assert ray_ids(ray, "dataset", dataset_uid) == [f"kdigits-dataset-{dataset_uid}-1"]

    # REST reads the same objects kubectl does.
    services = controller.services
    assert services is not None
    seen = services.store.get("Model", "mnist-lenet", A)
    assert seen.metadata.uid == uid and seen.status.phase.value == "Succeeded"  # type: ignore[attr-defined]


def test_deleting_a_running_model_stops_its_ray_job_and_cleans_storage(
    controller: Controller, kube: ApiClient, ray: RayBackend, dataset: dict[str, Any]
) -> None:
    body = copy.deepcopy(lenet(epochs=50, name="doomed"))
    model = apply(kube, body, A)
    uid = model["metadata"]["uid"]
    running = wait_for(
        lambda: get(kube, "Model", "doomed", A),
        lambda o: (
            phase(o) == "Running"
            and (info := ray.info(o["status"]["submissionId"])) is not None
            and not info.terminal
        ),
        120,
        "the doomed model's Ray job to run",
    )
    sid = running["status"]["submissionId"]
    store = controller.settings.home_dir / "store" / "models" / uid
    assert store.exists()
    delete(kube, "Model", "doomed", A)
    wait_for(lambda: get(kube, "Model", "doomed", A), lambda o: o is None, 90, "the deletion")
    # The finalizer stopped the job, waited for Ray to confirm, then forgot it and the files.
    assert ray.info(sid) is None
    assert not store.exists()
    assert not any(e[1] == "FinalizerForced" for e in events(kube, A, "doomed"))
