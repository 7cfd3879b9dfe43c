"""The shell commands Ray runs for each kind of job (the jobs' CLI contracts)."""

from __future__ import annotations

import shlex

from jobs.specs import Dataset, Model


def dataset_command(python: str, store_url: str, dataset: Dataset, data_roots: list[str]) -> str:
    args = [
        python,
        "-m",
        "jobs.build_dataset",
        "--store",
        store_url,
        "--dataset-id",
        str(dataset.metadata.uid),
    ]
    if data_roots:
        args += ["--data-roots", ":".join(data_roots)]
    return shlex.join(args)


def model_command(
    python: str,
    store_url: str,
    model: Model,
    dataset_uid: str,
    init_from: str | None = None,
    allow_custom_python: bool = False,
) -> str:
    args = [
        python,
        "-m",
        "jobs.train",
        "--store",
        store_url,
        "--model-id",
        str(model.metadata.uid),
        "--dataset-id",
        dataset_uid,
    ]
    if init_from:
        args += ["--init-from", init_from]
    if allow_custom_python:
        args.append("--allow-custom-python")
    return shlex.join(args)
