"""A checker for Kubernetes' structural-schema rules, which a CRD's openAPIV3Schema must follow.

The API server refuses (or degrades) a CRD whose schema is not structural. The rules, from the
Kubernetes docs ("Specifying a structural schema") and apiextensions' validation:
- every node has a `type`, except where `x-kubernetes-int-or-string` or
  `x-kubernetes-preserve-unknown-fields` stand in, and except inside `oneOf`/`anyOf`/`allOf`/`not`;
- inside those junctors (but for the two int-or-string shapes): no `type`, `description`,
  `default`, `additionalProperties`, `nullable`, and only fields and items that the
  enclosing node also specifies;
- no `$ref`, `definitions`, `$schema`, `id`, `patternProperties`, `dependencies`, `const`,
  `additionalItems`, `uniqueItems: true`, `additionalProperties: false`;
- `properties` and `additionalProperties` are mutually exclusive; arrays have `items`;
  `metadata` at the root restricts only `name` and `generateName`.
"""

from __future__ import annotations

from typing import Any

TYPES = {"object", "array", "string", "integer", "number", "boolean"}
FORBIDDEN = {
    "$ref",
    "$defs",
    "definitions",
    "$schema",
    "id",
    "patternProperties",
    "dependencies",
    "const",
    "additionalItems",
}
JUNCTORS = ("oneOf", "anyOf", "allOf")
NOT_IN_JUNCTORS = ("type", "description", "default", "additionalProperties", "nullable")
_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def violations(schema: dict[str, Any]) -> list[str]:
    """Every structural-schema rule `schema` (an openAPIV3Schema) breaks, with its path."""
    found: list[str] = []
    if schema.get("type") != "object":
        found.append("(root): type must be object")
    _node(schema, "(root)", found, in_junctor=False)
    metadata = schema.get("properties", {}).get("metadata")
    if isinstance(metadata, dict):
        extra = set(metadata.get("properties", {})) - {"name", "generateName"}
        if extra or set(metadata) - {"type", "description", "properties"}:
            found.append("(root).metadata: only name and generateName may be restricted")
    return found


def _node(node: Any, path: str, found: list[str], in_junctor: bool) -> None:
    if not isinstance(node, dict):
        found.append(f"{path}: a schema must be an object, got {node!r}")
        return
    for key in FORBIDDEN & set(node):
        found.append(f"{path}: {key} is not allowed")
    if node.get("uniqueItems") is True:
        found.append(f"{path}: uniqueItems: true is not allowed")
    if node.get("additionalProperties") is False:
        found.append(f"{path}: additionalProperties: false is not allowed")
    if "properties" in node and "additionalProperties" in node:
        found.append(f"{path}: properties and additionalProperties are mutually exclusive")
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        bound = "minimum" if key == "exclusiveMinimum" else "maximum"
        if key in node and (not isinstance(node[key], bool) or bound not in node):
            found.append(f"{path}: {key} must be a boolean beside {bound}")

    typed = "type" in node
    exempt = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields"
    )
    if in_junctor:
        for key in NOT_IN_JUNCTORS:
            if key in node:
                found.append(f"{path}: {key} is not allowed inside oneOf/anyOf/allOf/not")
    elif not typed and not exempt:
        found.append(f"{path}: type is missing")
    if typed and node["type"] not in TYPES:
        found.append(f"{path}: unknown type {node['type']!r}")
    if not in_junctor and typed:
        _typed_keywords(node, path, found)

    for name, sub in node.get("properties", {}).items():
        _node(sub, f"{path}.{name}", found, in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        _node(node["additionalProperties"], f"{path}.*", found, in_junctor)
    if "items" in node:
        _node(node["items"], f"{path}[]", found, in_junctor)
    for junctor in JUNCTORS:
        if node.get("x-kubernetes-int-or-string") and _int_or_string_pattern(junctor, node):
            continue
        for i, branch in enumerate(node.get(junctor, [])):
            where = f"{path}.{junctor}[{i}]"
            _node(branch, where, found, in_junctor=True)
            _branch_within(branch, node, where, found)
    if "not" in node:
        _node(node["not"], f"{path}.not", found, in_junctor=True)
        _branch_within(node["not"], node, f"{path}.not", found)


_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def _int_or_string_pattern(junctor: str, node: dict[str, Any]) -> bool:
    """The two junctor shapes allowed with `x-kubernetes-int-or-string` (types inside)."""
    branches = node.get(junctor, [])
    if junctor == "anyOf":
        return bool(branches == _INT_OR_STRING)
    if junctor == "allOf" and branches and isinstance(branches[0], dict):
        return bool(branches[0].get("anyOf") == _INT_OR_STRING)
    return False


def _typed_keywords(node: dict[str, Any], path: str, found: list[str]) -> None:
    kind = node["type"]
    if kind == "array" and "items" not in node:
        found.append(f"{path}: an array needs items")
    if kind != "object" and ("properties" in node or "additionalProperties" in node):
        found.append(f"{path}: properties on a {kind}")
    if kind in _PYTHON_TYPES:
        allowed = _PYTHON_TYPES[kind]
        for value in node.get("enum", []):
            wrong_bool = isinstance(value, bool) and kind != "boolean"
            if value is not None and (wrong_bool or not isinstance(value, allowed)):
                found.append(f"{path}: enum value {value!r} is not a {kind}")
    for name in node.get("required", []):
        if name not in node.get("properties", {}):
            found.append(f"{path}: required field {name!r} is not a property")


def _branch_within(branch: Any, outer: dict[str, Any], path: str, found: list[str]) -> None:
    """Fields and items a junctor branch names must be specified outside the junctor too."""
    if not isinstance(branch, dict):
        return
    outer_props = outer.get("properties", {})
    for name in list(branch.get("properties", {})) + list(branch.get("required", [])):
        if name not in outer_props:
            found.append(f"{path}: field {name!r} is not specified outside the junctor")
    for name, sub in branch.get("properties", {}).items():
        if name in outer_props:
            _branch_within(sub, outer_props[name], f"{path}.{name}", found)
    if "items" in branch:
        if "items" not in outer:
            found.append(f"{path}: items are not specified outside the junctor")
        else:
            _branch_within(branch["items"], outer["items"], f"{path}[]", found)
