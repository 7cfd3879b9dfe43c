"""Queue arithmetic and event-line tailing (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from controller.queue import Capacity, Demand, demand, order_key
from controller.tail import AttemptTail, merge_events, metric_series
from jobs.events import format_line, make_event
from jobs.specs import Dataset, Model, ModelStatus


def model(name: str, priority: int = 0, gpus: float = 0, minutes_ago: int = 0) -> Model:
    m = Model.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "dataset": "d",
                "network": {"standard": "lenet"},
                "priority": priority,
                "resources": {"gpusPerWorker": gpus, "workers": 2},
            },
        }
    )
    m.metadata.creation_timestamp = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return m


def test_demand_and_order() -> None:
    assert demand(model("a", gpus=1)) == Demand(cpus=2, gpus=2)
    ds = Dataset.model_validate(
        {"metadata": {"name": "d"}, "spec": {"source": {"folder": {"train": "/x"}}}}
    )
    assert demand(ds).gpus == 0
    jobs = [model("old", minutes_ago=5), model("new"), model("urgent", priority=10)]
    assert [j.metadata.name for j in sorted(jobs, key=order_key)] == ["urgent", "old", "new"]


def test_capacity_reasons() -> None:
    cap = Capacity(max_jobs=2, max_gpus=2, max_cpus=4)
    assert cap.blocked_by(Demand(cpus=1, gpus=2)) is None
    cap.add(Demand(cpus=1, gpus=2))
    assert cap.blocked_by(Demand(cpus=1, gpus=1)) == "1 GPUs (0 of 2 free)"
    assert cap.blocked_by(Demand(cpus=1)) is None
    assert "cluster allows 2" in str(cap.blocked_by(Demand(gpus=4)))
    cap.add(Demand(cpus=1))
    assert cap.blocked_by(Demand(cpus=1)) == "a free job slot (2 of 2 running)"
    assert Capacity(max_jobs=1, max_gpus=0).blocked_by(Demand(gpus=1)) is not None


def test_tail_whole_lines_and_overlay() -> None:
    events = [
        make_event("metric", name="loss", split="train", value=0.5, epoch=1),
        make_event("metric", name="accuracy", split="val", value=0.9, epoch=1),
        make_event("snapshot", epoch=1.0, key="models/x/snapshots/epoch-0001/"),
        make_event("progress", progress=0.5, eta=3.0, stage="training", epoch=1.0),
    ]
    text = "noise\n" + "".join(format_line(e) + "\n" for e in events)
    tail = AttemptTail("sid")
    cut = len(text) - 10
    assert len(tail.feed(text[:cut])) == 3  # the torn last line waits for the rest
    assert len(tail.feed(text[cut:])) == 1
    status = ModelStatus(metrics={"trainLoss": 9.0, "old": 1.0})
    tail.overlay_model(status)
    assert status.metrics == {"trainLoss": 0.5, "valAccuracy": 0.9, "old": 1.0}
    assert status.epoch == 1.0 and status.progress == 0.5 and status.eta == 3.0
    assert [s.epoch for s in status.snapshots] == [1.0]
    assert tail.last_lines == ["noise"]


def test_series_merge_dedupes() -> None:
    a = make_event("metric", name="loss", split="train", value=0.5, epoch=1)
    b = make_event("metric", name="loss", split="train", value=0.4, epoch=2)
    merged = merge_events([a, b], [b])
    assert len(merged) == 2
    (series,) = metric_series(merged)
    assert series["key"] == "trainLoss"
    assert [p["value"] for p in series["points"]] == [0.5, 0.4]
