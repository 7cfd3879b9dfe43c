"""Check objects against a CRD's openAPIV3Schema with `jsonschema`, as the API server would.

A CRD schema is OpenAPI v3.0, close to JSON Schema draft 4 (boolean `exclusiveMinimum`) but with
`nullable` and Kubernetes' `x-kubernetes-*` extensions. `to_jsonschema` rewrites `nullable` into
a `null` type and, unless a node preserves unknown fields, closes objects that list their
properties: the API server prunes unknown fields, and `kubectl apply` (strict field validation,
the default) rejects them, so a typo must fail here too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
SHARED_SCHEMAS = REPO.parent / "shared" / "schemas"

_CHILD_SCHEMAS = ("items", "not")
_BRANCHES = ("oneOf", "anyOf", "allOf")


def to_jsonschema(node: Any) -> Any:
    """A draft-4 JSON schema that accepts what the OpenAPI v3.0 `node` accepts."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in _CHILD_SCHEMAS or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = to_jsonschema(value)
        elif key in _BRANCHES:
            out[key] = [to_jsonschema(branch) for branch in value]
        elif key == "pattern":
            out[key] = _python_pattern(value)
        elif key != "nullable":
            out[key] = value
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    preserves = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-embedded-resource"
    )
    if "properties" in node and "additionalProperties" not in node and not preserves:
        out["additionalProperties"] = False
    return out


def _python_pattern(pattern: str) -> str:
    """Go's RE2 accepts `^(?i)...` (flags mid-pattern); Python wants the flags first."""
    flags = "".join(re.findall(r"\(\?([imsU]+)\)", pattern))
    if not flags or pattern.startswith(f"(?{flags})"):
        return pattern
    return f"(?{flags})" + re.sub(r"\(\?[imsU]+\)", "", pattern)


def crd_validator(crd: dict[str, Any], version: str | None = None) -> jsonschema.Draft4Validator:
    """A validator for objects of `crd`'s served `version` (the storage version by default)."""
    versions = crd["spec"]["versions"]
    chosen = next(
        v for v in versions if (v["name"] == version if version else v.get("storage", False))
    )
    schema = to_jsonschema(chosen["schema"]["openAPIV3Schema"])
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def load_crd(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        crd: dict[str, Any] = yaml.safe_load(stream)
    return crd


def shared_validator(filename: str, version: str | None = None) -> jsonschema.Draft4Validator:
    """A validator built from one of the third-party CRDs in `../shared/schemas/`."""
    return crd_validator(load_crd(SHARED_SCHEMAS / filename), version)


def error_paths(validator: jsonschema.Draft4Validator, obj: Any) -> list[str]:
    """Every failure in `obj`, as dotted paths to the failing field (deepest first)."""
    errors = sorted(validator.iter_errors(obj), key=lambda e: -len(e.absolute_path))
    return [".".join(str(p) for p in e.absolute_path) + f": {e.message}" for e in errors]
