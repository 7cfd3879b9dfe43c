"""Example CRs: the good ones pass our CRD schemas and the pydantic contract, the bad ones fail.

Each file in `k8s/examples/bad/` says in a `# expect-error-at: PATH` line which field the schema
must name. Each bad example is also rejected by pydantic in strict JSON mode, which is how the
CRD schema and the contract are kept in agreement.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from controller import crds
from jobs.specs import KINDS
from tests.k8s.openapi import REPO, crd_validator, error_paths

EXAMPLES = REPO / "k8s" / "examples"
GOOD = sorted(EXAMPLES.glob("*.yaml"))
BAD = sorted((EXAMPLES / "bad").glob("*.yaml"))
VALIDATORS = {kind.kind: crd_validator(crds.crd(kind)) for kind in crds.KINDS}


def _load(path: Path) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return obj


def _ids(path: Path) -> str:
    return path.name


def test_there_are_examples_of_every_kind() -> None:
    kinds = {_load(p)["kind"] for p in GOOD}
    assert kinds == set(KINDS)
    assert len(BAD) >= 10
    sources = [_load(p)["spec"]["source"] for p in GOOD if _load(p)["kind"] == "Dataset"]
    assert any("s3" in s for s in sources), "an MNIST dataset from a MinIO prefix"
    networks = [_load(p)["spec"]["network"] for p in GOOD if _load(p)["kind"] == "Model"]
    assert {"standard": "lenet"} in networks
    assert any("pretrained" in n for n in networks), "a fine-tune from a PretrainedModel"


@pytest.mark.parametrize("path", GOOD, ids=_ids)
def test_example_passes_the_crd_schema(path: Path) -> None:
    obj = _load(path)
    assert error_paths(VALIDATORS[obj["kind"]], obj) == []


@pytest.mark.parametrize("path", GOOD, ids=_ids)
def test_example_passes_the_contract(path: Path) -> None:
    obj = _load(path)
    resource = KINDS[obj["kind"]].model_validate(obj)
    assert resource.metadata.name == obj["metadata"]["name"]
    spec_model = KINDS[obj["kind"]].model_fields["spec"].annotation
    assert isinstance(spec_model, type)
    spec_model.model_validate_json(json.dumps(obj["spec"]), strict=True)


def test_example_references_resolve() -> None:
    """The model examples name a dataset, a pretrained model and a model that exist as examples."""
    names = {(o["kind"], o["metadata"]["name"]) for o in map(_load, GOOD)}
    for obj in map(_load, GOOD):
        spec = obj["spec"]
        if obj["kind"] == "Model":
            assert ("Dataset", spec["dataset"]) in names
            if "pretrained" in spec["network"]:
                assert ("PretrainedModel", spec["network"]["pretrained"]["name"]) in names
        if obj["kind"] == "PretrainedModel":
            assert ("Model", spec["fromModel"]["model"]) in names


def _expected_path(path: Path) -> str:
    match = re.search(r"^# expect-error-at: (\S+)$", path.read_text(encoding="utf-8"), re.M)
    assert match, f"{path.name} must say where it fails"
    return match.group(1)


@pytest.mark.parametrize("path", BAD, ids=_ids)
def test_bad_example_is_rejected_by_the_crd_schema_at_its_field(path: Path) -> None:
    """Rejected, and only at the field it names: each bad example has exactly one fault."""
    obj = _load(path)
    errors = error_paths(VALIDATORS[obj["kind"]], obj)
    assert errors, f"{path.name} was accepted"
    assert {e.split(": ", 1)[0] for e in errors} == {_expected_path(path)}, errors


@pytest.mark.parametrize("path", BAD, ids=_ids)
def test_bad_example_is_rejected_by_the_contract(path: Path) -> None:
    obj = _load(path)
    spec_model = KINDS[obj["kind"]].model_fields["spec"].annotation
    assert isinstance(spec_model, type)
    with pytest.raises(ValidationError):
        spec_model.model_validate_json(json.dumps(obj.get("spec", {})), strict=True)
