"""The generated CRDs: in sync with jobs/specs.py, structural, valid CustomResourceDefinitions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from controller import crds
from jobs.specs import GROUP, PLURALS, VERSION, DatasetSpec, ModelSpec
from tests.k8s import structural
from tests.k8s.openapi import REPO, crd_validator, error_paths, load_crd

CRD_FILES = sorted(p for d in crds.OUTPUT_DIRS for p in (REPO / d).glob("*.yaml"))


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _walk(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node] + [n for v in node.values() for n in _walk(v)]
    if isinstance(node, list):
        return [n for v in node for n in _walk(v)]
    return []


def test_committed_files_match_the_generator() -> None:
    stale = [str(p.relative_to(REPO)) for p in crds.drifted()]
    assert not stale, f"regenerate with `python -m controller.crds --write`: {stale}"
    expected = set(crds.expected_files())
    assert set(CRD_FILES) == expected, "stray or missing files in the CRD folders"


def test_drift_is_detected(tmp_path: Path) -> None:
    crds.write(tmp_path)
    assert crds.drifted(tmp_path) == []
    victim = tmp_path / crds.OUTPUT_DIRS[1] / crds.KINDS[0].filename
    victim.write_text(victim.read_text().replace("maximum: 4096", "maximum: 4097"))
    assert crds.drifted(tmp_path) == [victim]
    victim.unlink()
    assert crds.drifted(tmp_path) == [victim]


def test_one_crd_per_kind_with_names_and_columns() -> None:
    objects = crds.crds()
    assert [o["spec"]["names"]["kind"] for o in objects] == list(PLURALS)
    for obj in objects:
        spec = obj["spec"]
        names = spec["names"]
        assert obj["metadata"]["name"] == f"{names['plural']}.{GROUP}"
        assert names["plural"] == PLURALS[names["kind"]]
        assert spec["scope"] == "Namespaced"
        assert names["categories"] == ["kdigits"]
        assert names["shortNames"] and all(s.startswith("kd") for s in names["shortNames"])
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
        assert version["subresources"] == {"status": {}}
        columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
        assert columns["Phase"] == ".status.phase"
        assert columns["Age"] == ".metadata.creationTimestamp"
    model = objects[1]["spec"]["versions"][0]["additionalPrinterColumns"]
    by_name = {c["name"]: c for c in model}
    assert by_name["Accuracy"]["jsonPath"] == ".status.metrics.valAccuracy"
    assert by_name["Epoch"]["jsonPath"] == ".status.epoch"
    assert by_name["Progress"]["jsonPath"] == ".status.progress"


def test_short_names_are_unique() -> None:
    short = [s for o in crds.crds() for s in o["spec"]["names"]["shortNames"]]
    assert len(short) == len(set(short))


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_crd_is_a_valid_custom_resource_definition(path: Path) -> None:
    crd = load_crd(path)
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_schema_is_structural(path: Path) -> None:
    schema = _schema(load_crd(path))
    assert structural.violations(schema) == []
    assert not [n for n in _walk(schema) if "title" in n and isinstance(n["title"], str)]
    assert not [n for n in _walk(schema) if "default" in n], "defaults are pydantic's to apply"


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ({"type": "object", "properties": {"a": {}}}, "(root).a: type is missing"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "$ref is not allowed"),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "oneOf": [{"type": "x"}]},
            "type is not allowed inside",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "oneOf": [{"required": ["b"]}],
            },
            "'b' is not specified outside",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {}},
            "mutually exclusive",
        ),
        ({"type": "object", "properties": {"a": {"type": "array"}}}, "an array needs items"),
        (
            {"type": "object", "properties": {"a": {"type": "number", "exclusiveMinimum": 0}}},
            "exclusiveMinimum must be a boolean",
        ),
        ({"type": "object", "additionalProperties": False}, "additionalProperties: false"),
    ],
)
def test_structural_checker_catches(bad: dict[str, Any], complaint: str) -> None:
    assert any(complaint in v for v in structural.violations(bad)), structural.violations(bad)


def test_preserve_unknown_fields_and_int_or_string_need_no_type() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "free": {"x-kubernetes-preserve-unknown-fields": True},
            "port": {
                "x-kubernetes-int-or-string": True,
                "anyOf": [{"type": "integer"}, {"type": "string"}],
            },
        },
    }
    assert structural.violations(schema) == []
    schema["properties"]["port"]["anyOf"].append({"type": "boolean"})
    assert structural.violations(schema) == [
        f"(root).port.anyOf[{i}]: type is not allowed inside oneOf/anyOf/allOf/not"
        for i in range(3)
    ]


def test_validation_is_carried_over() -> None:
    """Ranges, enums, patterns, exclusive bounds, nullability and oneOf reach the CRD."""
    dataset = _schema(crds.crd(crds.KINDS[0]))["properties"]["spec"]
    image = dataset["properties"]["image"]["properties"]
    assert (image["width"]["minimum"], image["width"]["maximum"]) == (1, 4096)
    assert image["resizeMode"]["enum"] == ["squash", "crop", "fill", "half_crop"]
    assert image["channels"]["enum"] == [1, 3]
    assert dataset["required"] == ["source"]
    source = dataset["properties"]["source"]
    assert source["oneOf"] == [{"required": [k]} for k in ("folder", "textfile", "s3")]
    assert source["properties"]["folder"]["nullable"] is True
    bucket = source["properties"]["s3"]["properties"]["bucket"]
    assert bucket["pattern"] and bucket["maxLength"] == 63
    model = _schema(crds.crd(crds.KINDS[1]))["properties"]["spec"]
    base_lr = model["properties"]["solver"]["properties"]["baseLr"]
    assert (base_lr["minimum"], base_lr["exclusiveMinimum"]) == (0, True)
    layers = model["properties"]["network"]["properties"]["custom"]["properties"]["layers"]
    assert (layers["minItems"], layers["maxItems"]) == (1, 512)
    assert "description" in model["properties"]["dataset"]


def test_status_keeps_unknown_fields_for_kopf() -> None:
    for kind in crds.KINDS:
        status = _schema(crds.crd(kind))["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True
        assert status["properties"]["phase"]["enum"][0] == "Pending"


def test_status_written_by_the_models_validates() -> None:
    from jobs.specs import Condition, ModelStatus, Phase, SnapshotStatus

    status = ModelStatus(
        phase=Phase.RUNNING,
        progress=0.5,
        epoch=2.5,
        metrics={"valAccuracy": 0.97, "trainLoss": 0.1},
        snapshots=[SnapshotStatus(epoch=2, key="models/x/snapshots/epoch-0002")],
        conditions=[Condition(type="Ready", status="False", reason="Training")],
    )
    obj: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Model",
        "metadata": {"name": "m"},
        "spec": ModelSpec.model_validate(
            {"dataset": "d", "network": {"standard": "lenet"}}
        ).to_json_dict(),
        "status": status.to_json_dict(),
    }
    validator = crd_validator(crds.crd(crds.KINDS[1]))
    assert error_paths(validator, obj) == []
    obj["status"]["phase"] = "Exploded"
    assert error_paths(validator, obj)[0].startswith("status.phase")


def test_defaults_from_pydantic_validate() -> None:
    """A spec dumped with every pydantic default passes the CRD schema (no stricter than us)."""
    spec = DatasetSpec.model_validate({"source": {"folder": {"train": "/d"}}})
    obj = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Dataset",
        "metadata": {"name": "d"},
        "spec": spec.to_json_dict(),
    }
    assert error_paths(crd_validator(crds.crd(crds.KINDS[0])), obj) == []
    model = ModelSpec.model_validate({"dataset": "d", "network": {"custom": {"python": "x"}}})
    obj = {**obj, "kind": "Model", "spec": model.to_json_dict()}
    assert error_paths(crd_validator(crds.crd(crds.KINDS[1])), obj) == []


def test_main_check_and_print(capsys: pytest.CaptureFixture[str]) -> None:
    assert crds.main(["--check"]) == 0
    assert crds.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("kind: CustomResourceDefinition") == 3
