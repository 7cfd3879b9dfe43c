"""Kubernetes Events for kdigits objects: phase transitions and the operator's decisions.

`kubectl describe model NAME` (and `kubectl get events`) then tells the story of a job:
Queued, Running, Succeeded or Failed with the reason, a spec change refused, a finalizer
released without Ray. Events are posted with the controller's own client from whichever thread
notices the change (the reconciler's, a kopf handler's); posting is best effort and never fails
the write it reports.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient

from controller.operator.kube import post_json
from controller.store.base import Transition
from jobs.specs import API_VERSION, Phase, Resource

log = logging.getLogger(__name__)

COMPONENT = "kdigits-controller"
MESSAGE_LIMIT = 1024
WARNING_PHASES = frozenset({Phase.FAILED.value, Phase.ABORTED.value})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def involved(obj: Resource | Mapping[str, Any]) -> dict[str, Any]:
    """The ObjectReference of an object, from the contract's model or a raw CR."""
    if isinstance(obj, Resource):
        meta = obj.metadata
        return {
            "apiVersion": API_VERSION,
            "kind": obj.kind,  # type: ignore[attr-defined]
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "resourceVersion": meta.resource_version,
        }
    meta = obj.get("metadata", {})
    return {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": obj.get("kind"),
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "uid": meta.get("uid"),
        "resourceVersion": meta.get("resourceVersion"),
    }


class EventRecorder:
    """Posts core/v1 Events about kdigits objects."""

    def __init__(self, api_client: ApiClient, component: str = COMPONENT) -> None:
        self.api_client = api_client
        self.component = component
        self.instance = os.environ.get("HOSTNAME") or socket.gethostname()

    def post(self, obj: Resource | Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """Post one Event (`kind` is Normal or Warning); failures are logged, not raised."""
        ref = {k: v for k, v in involved(obj).items() if v is not None}
        ns = str(ref.get("namespace") or "default")
        now = _now()
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref.get('name')}.{uuid.uuid4().hex[:16]}", "namespace": ns},
            "involvedObject": ref,
            "type": kind,
            "reason": reason,
            "message": message[:MESSAGE_LIMIT],
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            post_json(self.api_client, f"/api/v1/namespaces/{ns}/events", body)
        except Exception as error:  # noqa: BLE001 - an Event is never worth a failure
            log.warning("could not post the %s event for %s: %s", reason, ref.get("name"), error)

    def transition(self, obj: Resource, old_phase: str | None, transition: Transition) -> None:
        """The store's hook: one Event per phase change or new attempt."""
        kind = "Warning" if transition.phase in WARNING_PHASES else "Normal"
        head = f"{old_phase} -> {transition.phase}" if old_phase else transition.phase
        if transition.attempt:
            head += f" (attempt {transition.attempt})"
        message = f"{head}: {transition.message}" if transition.message else head
        self.post(obj, kind, transition.phase, message)
