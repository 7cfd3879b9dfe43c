"""Fixtures for controller tests: services on a real local Ray head running fake_job.py."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.services import Services
from controller.settings import Settings
from jobs.specs import Dataset, Model, Resource

FAKE_JOB = Path(__file__).with_name("fake_job.py")
OPTION_LABELS = ("epochs", "sleep", "fail-attempts", "report-failure", "exit-code")


def fake_args(obj: Resource) -> list[str]:
    """fake_job.py options from the object's `fake/<option>` labels."""
    args: list[str] = []
    for option in OPTION_LABELS:
        value = obj.metadata.labels.get(f"fake/{option}")
        if value is not None:
            args += [f"--{option}", value.replace("_", " ")]
    return args


def fake_services(settings: Settings) -> Services:
    store_url = settings.object_store_url

    def dataset_command(dataset: Dataset) -> str:
        args = [sys.executable, str(FAKE_JOB), "dataset", store_url, str(dataset.metadata.uid)]
        return shlex.join(args + fake_args(dataset))

    def model_command(model: Model, dataset_uid: str, init: str | None) -> str:
        args = [sys.executable, str(FAKE_JOB), "model", store_url, str(model.metadata.uid)]
        return shlex.join(args + fake_args(model))

    return Services.build(settings, dataset_command=dataset_command, model_command=model_command)


@pytest.fixture
def fake_settings(tmp_path: Path, ray_head) -> Iterator[Settings]:  # type: ignore[no-untyped-def]
    data = tmp_path / "data" / "train" / "a"
    data.mkdir(parents=True)
    yield Settings(
        home=tmp_path / "home",
        ray_address=ray_head.dashboard_url,
        data_roots=str(tmp_path / "data"),
        reconcile_interval=0.2,
        max_running_jobs=2,
    )
