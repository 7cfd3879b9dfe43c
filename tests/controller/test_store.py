"""The SQLite job store: identity, optimistic concurrency, paging, history, crash safety."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controller.store import AlreadyExists, Conflict, NotFound, SQLiteStore
from jobs.specs import Dataset, Model, ObjectMeta, Phase


def dataset(name: str, labels: dict[str, str] | None = None, namespace: str = "default") -> Dataset:
    return Dataset.model_validate(
        {
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"source": {"folder": {"train": "/data/train"}}},
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    return SQLiteStore(tmp_path / "kdigits.db")


def test_create_sets_identity(store: SQLiteStore) -> None:
    created = store.create(dataset("a"))
    meta = created.metadata
    assert meta.uid and len(meta.uid) == 36
    assert meta.generation == 1 and meta.resource_version and meta.creation_timestamp
    assert store.get("Dataset", "a") == created
    with pytest.raises(AlreadyExists):
        store.create(dataset("a"))
    assert store.create(dataset("a", namespace="other")).metadata.uid != meta.uid


def test_optimistic_concurrency_and_generation(store: SQLiteStore) -> None:
    first = store.create(dataset("a"))
    status_update = first.model_copy(deep=True)
    status_update.status.phase = Phase.QUEUED
    second = store.update_status(status_update)
    assert second.metadata.generation == 1  # status does not bump the generation
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    stale = first.model_copy(deep=True)
    stale.status.phase = Phase.RUNNING
    with pytest.raises(Conflict):
        store.update_status(stale)
    spec_change = second.model_copy(deep=True)
    spec_change.spec.priority = 5
    third = store.update(spec_change)
    assert third.metadata.generation == 2
    assert third.status.phase == Phase.QUEUED  # update() leaves status alone
    labels_only = third.model_copy(deep=True)
    labels_only.metadata.labels = {"x": "y"}
    assert store.update(labels_only).metadata.generation == 2


def test_list_paging_and_labels(store: SQLiteStore) -> None:
    for i in range(7):
        store.create(dataset(f"d{i}", {"kdigits.io/group": "even" if i % 2 == 0 else "odd"}))
    page = store.list("Dataset", "default", limit=3)
    names = [o.metadata.name for o in page.items]
    assert names == ["d0", "d1", "d2"] and page.continue_token
    rest = store.list("Dataset", "default", limit=10, continue_token=page.continue_token)
    assert [o.metadata.name for o in rest.items] == ["d3", "d4", "d5", "d6"]
    assert rest.continue_token is None
    even = store.list("Dataset", labels={"kdigits.io/group": "even"})
    assert [o.metadata.name for o in even.items] == ["d0", "d2", "d4", "d6"]
    with pytest.raises(ValueError):
        store.list("Dataset", continue_token="garbage!")


def test_history_delete_and_counts(store: SQLiteStore) -> None:
    obj = store.create(dataset("a"))
    for phase in (Phase.QUEUED, Phase.RUNNING, Phase.RUNNING, Phase.SUCCEEDED):
        obj = obj.model_copy(deep=True)
        obj.status.phase = phase
        obj = store.update_status(obj)
    assert [t.phase for t in store.history("Dataset", "a")] == [
        "Pending",
        "Queued",
        "Running",
        "Succeeded",
    ]
    assert store.count_by_phase() == {("Dataset", "Succeeded"): 1}
    marked = store.mark_deleted("Dataset", "a")
    assert marked.metadata.deletion_timestamp is not None
    assert store.mark_deleted("Dataset", "a").metadata.deletion_timestamp == (
        marked.metadata.deletion_timestamp
    )
    store.remove("Dataset", "a", "default", "another-uid")  # a different object: kept
    store.get("Dataset", "a")
    store.remove("Dataset", "a", "default", str(obj.metadata.uid))
    with pytest.raises(NotFound):
        store.get("Dataset", "a")


def test_model_round_trip(store: SQLiteStore) -> None:
    model = Model(
        metadata=ObjectMeta(name="m"),
        spec={"dataset": "d", "network": {"standard": "lenet"}},  # type: ignore[arg-type]
    )
    created = store.create(model)
    created.status.metrics = {"valAccuracy": 0.9}
    updated = store.update_status(created)
    assert store.get("Model", "m") == updated


def test_survives_a_killed_writer(tmp_path: Path) -> None:
    """A process killed mid-stream leaves every committed write (WAL, synchronous=FULL)."""
    db = tmp_path / "k.db"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from controller.store import SQLiteStore
from jobs.specs import Dataset
store = SQLiteStore({str(db)!r})
spec = {{"source": {{"folder": {{"train": "/x"}}}}}}
for i in range(20):
    store.create(Dataset.model_validate({{"metadata": {{"name": f"d{{i}}"}}, "spec": spec}}))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9
    reopened = SQLiteStore(db)
    assert len(reopened.list("Dataset").items) == 20
