"""The spec contract: defaults, camelCase round trips, and field-named rejections."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from jobs.specs import (
    Dataset,
    DatasetSpec,
    LrPolicySpec,
    LrPolicyType,
    Model,
    ModelSpec,
    Phase,
    ResizeMode,
    SolverType,
)


def _dataset(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": {"folder": {"train": "/data/train"}}}
    body.update(spec)
    return body


def _errors(exc: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in exc.value.errors()}


def test_dataset_defaults_follow_digits() -> None:
    spec = DatasetSpec.model_validate(_dataset())
    assert spec.image.channels == 3
    assert (spec.image.width, spec.image.height) == (256, 256)
    assert spec.image.resize_mode is ResizeMode.SQUASH
    assert spec.split.val_percent == 25
    assert spec.split.test_percent == 0
    assert spec.split.min_per_class == 2
    assert spec.encoding.value == "png"


def test_camel_case_round_trip_and_snake_case_accepted() -> None:
    spec = DatasetSpec.model_validate(
        _dataset(image={"resizeMode": "half_crop", "width": 28, "height": 28, "channels": 1})
    )
    dumped = spec.to_json_dict()
    assert dumped["image"]["resizeMode"] == "half_crop"
    assert DatasetSpec.model_validate(dumped) == spec
    snake = DatasetSpec.model_validate(_dataset(split={"val_percent": 10}))
    assert snake.split.val_percent == 10


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        (_dataset(image={"width": -3}), "image.width", "greater than or equal to 1"),
        (_dataset(image={"resizeMode": "stretch"}), "image.resizeMode", "squash"),
        (_dataset(image={"channels": 2}), "image.channels", "1 or 3"),
        (_dataset(split={"valPercent": 60, "testPercent": 40}), "split", "less than 100"),
        (_dataset(split={"valPercent": 101}), "split.valPercent", "less than or equal to 100"),
        (_dataset(split={"minPerClass": 5, "maxPerClass": 2}), "split", "maxPerClass"),
        ({"source": {}}, "source", "exactly one of folder, textfile, s3"),
        ({"source": {"folder": {}}}, "source.folder.train", "Field required"),
        (_dataset(encoding="gif"), "encoding", "none"),
        (_dataset(colour=1), "colour", "Extra inputs are not permitted"),
        (
            {"source": {"s3": {"bucket": "b1b", "accessKey": "AKIA"}}},
            "source.s3.accessKey",
            "Extra inputs",
        ),
    ],
)
def test_bad_dataset_specs_name_field_and_reason(
    spec: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        DatasetSpec.model_validate(spec)
    errors = _errors(exc)
    assert field in errors, errors
    assert reason in errors[field]


def test_model_spec_defaults_and_solver_case() -> None:
    spec = ModelSpec.model_validate(
        {"dataset": "mnist", "network": {"standard": "lenet"}, "solver": {"type": "ADAM"}}
    )
    assert spec.solver.type is SolverType.ADAM
    assert spec.training.epochs == 30
    assert spec.solver.base_lr == 0.01
    assert spec.solver.lr_policy.policy is LrPolicyType.STEP
    assert spec.resources.workers == 1


@pytest.mark.parametrize(
    ("spec", "field", "reason"),
    [
        ({"dataset": "d", "network": {}}, "network", "exactly one of standard"),
        (
            {"dataset": "d", "network": {"standard": "lenet", "custom": {"layers": []}}},
            "network.custom.layers",
            "at least 1",
        ),
        (
            {"dataset": "d", "network": {"standard": "lenet"}, "solver": {"baseLr": 0}},
            "solver.baseLr",
            "greater than 0",
        ),
        (
            {"dataset": "d", "network": {"standard": "lenet"}, "solver": {"type": "lbfgs"}},
            "solver.type",
            "sgd",
        ),
        ({"dataset": "Bad_Name", "network": {"standard": "lenet"}}, "dataset", "pattern"),
        (
            {"dataset": "d", "network": {"custom": {"layers": [{"type": "conv"}]}}},
            "network.custom.layers.0",
            "outChannels and kernelSize",
        ),
        (
            {
                "dataset": "d",
                "network": {"standard": "lenet"},
                "solver": {"lrPolicy": {"policy": "multistep", "stepValues": [80, 20]}},
            },
            "solver.lrPolicy.stepValues",
            "increasing",
        ),
    ],
)
def test_bad_model_specs_name_field_and_reason(
    spec: dict[str, Any], field: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as exc:
        ModelSpec.model_validate(spec)
    errors = _errors(exc)
    assert field in errors, errors
    assert reason in errors[field]


def test_lr_policy_defaults_are_digits() -> None:
    assert LrPolicySpec(policy=LrPolicyType.STEP).effective_gamma() == 0.1
    assert LrPolicySpec(policy=LrPolicyType.MULTISTEP).effective_gamma() == 0.5
    assert LrPolicySpec(policy=LrPolicyType.POLY).effective_power() == 3.0
    assert LrPolicySpec(policy=LrPolicyType.INV, gamma=0.2).effective_gamma() == 0.2


def test_object_envelope_and_names() -> None:
    obj = Model.model_validate(
        {"metadata": {"name": "lenet-1"}, "spec": {"dataset": "d", "network": {"standard": "x"}}}
    )
    assert obj.api_version == "kdigits.io/v1alpha1"
    assert obj.metadata.namespace == "default"
    assert obj.status.phase is Phase.PENDING
    with pytest.raises(ValidationError) as exc:
        Dataset.model_validate({"metadata": {"name": "-bad-"}, "spec": _dataset()})
    assert "metadata.name" in _errors(exc)
    assert Phase.ABORTED.terminal and not Phase.QUEUED.terminal
