"""The Kubernetes store over the API server's HTTP protocol: identity, optimistic concurrency,
the status subresource, label selectors and paging, finalizers, history and transitions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kubernetes.client import ApiClient, CustomObjectsApi

from controller.store import AlreadyExists, Conflict, NotFound, Transition
from controller.store.kubernetes import FINALIZER, KubernetesStore, merge_patch
from jobs.specs import Dataset, Phase, Resource


def dataset(name: str, namespace: str, labels: dict[str, str] | None = None) -> Dataset:
    return Dataset.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"source": {"folder": {"train": "/data/train"}}},
        }
    )


@pytest.fixture
def ns() -> str:
    """A fresh namespace per test: the API server is shared by the session."""
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def seen() -> list[tuple[str, str | None, Transition]]:
    return []


@pytest.fixture
def store(kube: ApiClient, seen: list[tuple[str, str | None, Transition]]) -> KubernetesStore:
    def record(obj: Resource, old: str | None, transition: Transition) -> None:
        seen.append((obj.metadata.name, old, transition))

    return KubernetesStore(kube, on_transition=record)


def test_merge_patch() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1], "f": None}
    new = {"a": 1, "b": {"c": 4}, "e": [1, 2], "g": "x"}
    assert merge_patch(old, new) == {"b": {"c": 4, "d": None}, "e": [1, 2], "f": None, "g": "x"}
    assert merge_patch(new, new) == {}


def test_create_sets_server_identity_and_finalizer(
    store: KubernetesStore, kube: ApiClient, ns: str
) -> None:
    created = store.create(dataset("a", ns))
    meta = created.metadata
    assert meta.uid and meta.generation == 1 and meta.resource_version and meta.creation_timestamp
    assert store.get("Dataset", "a", ns) == created
    raw: Any = CustomObjectsApi(kube).get_namespaced_custom_object(
        "kdigits.io", "v1alpha1", ns, "datasets", "a"
    )
    assert raw["metadata"]["finalizers"] == [FINALIZER]  # kubectl sees the same object
    assert raw["spec"] == created.spec.to_json_dict()
    with pytest.raises(AlreadyExists):
        store.create(dataset("a", ns))
    with pytest.raises(NotFound):
        store.get("Dataset", "nope", ns)


def test_optimistic_concurrency_generation_and_status_subresource(
    store: KubernetesStore, ns: str, seen: list[tuple[str, str | None, Transition]]
) -> None:
    first = store.create(dataset("a", ns))
    queued = first.model_copy(deep=True)
    queued.status.phase = Phase.QUEUED
    queued.status.waiting_for = "a slot"
    second = store.update_status(queued)
    assert second.metadata.generation == 1 and second.status.waiting_for == "a slot"
    assert int(str(second.metadata.resource_version)) > int(str(first.metadata.resource_version))
    assert [(name, old, t.phase) for name, old, t in seen] == [("a", "Pending", "Queued")]
    stale = first.model_copy(deep=True)
    stale.status.phase = Phase.RUNNING
    with pytest.raises(Conflict):
        store.update_status(stale)
    running = second.model_copy(deep=True)
    running.status.phase = Phase.RUNNING
    running.status.waiting_for = None  # a field that goes must go on the server too
    running.spec.priority = 7  # ignored: update_status writes status only
    third = store.update_status(running)
    assert third.status.waiting_for is None and third.spec.priority == 0
    spec_change = third.model_copy(deep=True)
    spec_change.spec.priority = 5
    spec_change.status.phase = Phase.FAILED  # ignored: update writes metadata and spec only
    fourth = store.update(spec_change)
    assert fourth.metadata.generation == 2 and fourth.spec.priority == 5
    assert fourth.status.phase == Phase.RUNNING
    labels_only = fourth.model_copy(deep=True)
    labels_only.metadata.labels = {"x": "y"}
    assert store.update(labels_only).metadata.generation == 2
    with pytest.raises(Conflict):
        store.update(spec_change)  # its resourceVersion is stale now


def test_list_labels_paging_and_namespaces(store: KubernetesStore, ns: str) -> None:
    other = f"{ns}-b"
    for i in range(5):
        store.create(dataset(f"d{i}", ns, {"kdigits.io/group": "even" if i % 2 == 0 else "odd"}))
    store.create(dataset("z", other))
    page = store.list("Dataset", ns, limit=2)
    assert [o.metadata.name for o in page.items] == ["d0", "d1"] and page.continue_token
    rest = store.list("Dataset", ns, limit=10, continue_token=page.continue_token)
    assert [o.metadata.name for o in rest.items] == ["d2", "d3", "d4"]
    assert rest.continue_token is None
    even = store.list("Dataset", ns, labels={"kdigits.io/group": "even"})
    assert [o.metadata.name for o in even.items] == ["d0", "d2", "d4"]
    everywhere = {(o.metadata.namespace, o.metadata.name) for o in store.list("Dataset").items}
    assert {(ns, "d0"), (other, "z")} <= everywhere
    with pytest.raises(ValueError):
        store.list("Dataset", ns, continue_token="garbage!")
    counts = store.count_by_phase()
    assert counts[("Dataset", "Pending")] >= 6


def test_delete_is_two_steps_and_history(store: KubernetesStore, ns: str) -> None:
    obj = store.create(dataset("a", ns))
    for phase in (Phase.QUEUED, Phase.RUNNING, Phase.SUCCEEDED):
        obj = obj.model_copy(deep=True)
        obj.status.phase = phase
        obj.status.attempt = 1
        obj = store.update_status(obj)
    history = store.history("Dataset", "a", ns)
    assert [t.phase for t in history] == ["Pending", "Queued", "Running", "Succeeded"]
    assert history[0].message == "created"
    marked = store.mark_deleted("Dataset", "a", ns)
    assert marked.metadata.deletion_timestamp is not None
    assert store.get("Dataset", "a", ns).metadata.deletion_timestamp is not None
    assert store.mark_deleted("Dataset", "a", ns).metadata.deletion_timestamp is not None
    store.remove("Dataset", "a", ns, "some-other-uid")  # another object's uid: nothing happens
    assert store.get("Dataset", "a", ns)
    store.remove("Dataset", "a", ns, str(obj.metadata.uid))
    with pytest.raises(NotFound):
        store.get("Dataset", "a", ns)
    store.remove("Dataset", "a", ns, str(obj.metadata.uid))  # idempotent


def test_objects_breaking_the_contract_are_left_out(
    store: KubernetesStore, kube: ApiClient, ns: str
) -> None:
    """kubectl can store what the CRD schema allows and the contract refuses (cross-field)."""
    body = {
        "apiVersion": "kdigits.io/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "bad", "namespace": ns},
        "spec": {
            "source": {"folder": {"train": "/data/train"}},
            "split": {"valPercent": 60, "testPercent": 50},
        },
    }
    CustomObjectsApi(kube).create_namespaced_custom_object(
        "kdigits.io", "v1alpha1", ns, "datasets", body
    )
    store.create(dataset("good", ns))
    assert [o.metadata.name for o in store.list("Dataset", ns).items] == ["good"]
    with pytest.raises(NotFound):
        store.get("Dataset", "bad", ns)
    assert store.get_raw("Dataset", "bad", ns)["spec"]["split"]["valPercent"] == 60
