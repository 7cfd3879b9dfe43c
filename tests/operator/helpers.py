"""What the operator tests share: kubectl-like calls on the API server, waiting, Events."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from jobs.specs import GROUP, PLURALS, VERSION

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "k8s" / "examples"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def example(name: str) -> dict[str, Any]:
    """One of the example CRs in k8s/examples/, as `kubectl apply -f` reads it."""
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    return body


def apply(api: ApiClient, body: dict[str, Any], namespace: str) -> dict[str, Any]:
    """`kubectl apply` of a new object: a POST carrying the last-applied annotation."""
    body = copy.deepcopy(body)
    meta = body.setdefault("metadata", {})
    meta["namespace"] = namespace
    meta.setdefault("annotations", {})[LAST_APPLIED] = json.dumps(body, sort_keys=True)
    plural = PLURALS[body["kind"]]
    response: Any = CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body, _preload_content=False
    )
    created: dict[str, Any] = response.json()
    return created


def get(api: ApiClient, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """`kubectl get -o json`, or None when it is gone."""
    try:
        response: Any = CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[kind], name, _preload_content=False
        )
        obj: dict[str, Any] = response.json()
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return obj


def patch_spec(
    api: ApiClient, kind: str, name: str, namespace: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """`kubectl patch --type=merge -p '{"spec": ...}'`."""
    response: Any = CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name, {"spec": spec}, _preload_content=False
    )
    patched: dict[str, Any] = response.json()
    return patched


def delete(api: ApiClient, kind: str, name: str, namespace: str) -> None:
    """`kubectl delete --wait=false`."""
    CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[kind], name, _preload_content=False
    )


def events(api: ApiClient, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about `name` (in no particular order)."""
    request = api.param_serialize("GET", f"/api/v1/namespaces/{namespace}/events")
    response = api.call_api(*request)
    response.read()
    items = json.loads(response.data or b"{}").get("items", [])
    return [
        (e["type"], e["reason"], e["message"])
        for e in items
        if e.get("involvedObject", {}).get("name") == name
    ]


def wait_for(
    read: Callable[[], Any], until: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    deadline = time.monotonic() + timeout
    value = read()
    while not until(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {value}")
        time.sleep(0.3)
        value = read()
    return value


def phase(obj: dict[str, Any] | None) -> str | None:
    return None if obj is None else (obj.get("status") or {}).get("phase")
