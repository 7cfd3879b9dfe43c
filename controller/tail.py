"""From event lines to status: what one job attempt has reported so far.

The reconciler reads each attempt's log through the Ray Jobs API by offset, feeds whole lines to
an `AttemptTail`, and overlays the tail onto the stored status every pass. Because a tail is
rebuilt from offset 0 after a restart, status derived from it is idempotent: replaying the same
log yields the same status.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controller.metrics import metric_key
from jobs.events import Event, parse_line
from jobs.specs import DatasetStatus, ModelStatus, SnapshotStatus


@dataclass
class AttemptTail:
    submission_id: str
    offset: int = 0
    next_read: float = 0.0  # time.monotonic() before which the log is not read again
    partial: str = ""
    events: list[Event] = field(default_factory=list)
    progress: float | None = None
    eta: float | None = None
    epoch: float | None = None
    stage: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    snapshots: dict[float, str] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    done: Event | None = None
    last_lines: list[str] = field(default_factory=list)

    def feed(self, text: str, final: bool = False) -> list[Event]:
        """Consume log text; only whole lines count unless the log is final."""
        data = self.partial + text
        lines = data.split("\n")
        self.partial = "" if final else lines.pop()
        new: list[Event] = []
        for line in lines:
            if not line.strip():
                continue
            event = parse_line(line)
            if event is None:
                self.last_lines = (self.last_lines + [line])[-20:]
                continue
            self.apply(event)
            new.append(event)
        return new

    def apply(self, event: Event) -> None:
        self.events.append(event)
        kind = event.get("kind")
        epoch = _number(event.get("epoch"))
        if kind == "progress":
            progress = _number(event.get("progress"))
            if progress is not None:
                self.progress = min(1.0, max(0.0, progress))
            self.eta = _number(event.get("eta"))
            if isinstance(event.get("stage"), str):
                self.stage = event["stage"]
            if epoch is not None:
                self.epoch = epoch
        elif kind == "metric":
            value = _number(event.get("value"))
            name = event.get("name")
            if isinstance(name, str) and value is not None:
                self.metrics[metric_key(name, event.get("split"))] = value
            if epoch is not None:
                self.epoch = max(self.epoch or 0.0, epoch)
        elif kind == "snapshot":
            if epoch is not None and isinstance(event.get("key"), str):
                self.snapshots[epoch] = event["key"]
        elif kind == "stats":
            self.stats = event
        elif kind == "done":
            self.done = event

    @property
    def failed_message(self) -> str | None:
        """The job's own failure message, when it reported one (a permanent error)."""
        if self.done and self.done.get("phase") == "Failed":
            return str(self.done.get("message") or "the job reported failure")
        return None

    def overlay_model(self, status: ModelStatus) -> None:
        if self.progress is not None:
            status.progress = self.progress
        if self.eta is not None or self.progress is not None:
            status.eta = self.eta
        if self.epoch is not None:
            status.epoch = self.epoch
        status.metrics = {**status.metrics, **self.metrics}
        known = {s.epoch: s for s in status.snapshots}
        for epoch, key in self.snapshots.items():
            known[epoch] = SnapshotStatus(epoch=epoch, key=key)
        status.snapshots = [known[e] for e in sorted(known)]

    def overlay_dataset(self, status: DatasetStatus) -> None:
        if self.progress is not None:
            status.progress = self.progress
        if self.eta is not None or self.progress is not None:
            status.eta = self.eta
        if self.stats is not None:
            apply_stats(status, self.stats)


def apply_stats(status: DatasetStatus, stats: dict[str, Any]) -> None:
    """Dataset stats (a `stats` event or stats.json) into status."""
    images = stats.get("images")
    if isinstance(images, dict):
        status.images = {str(k): int(v) for k, v in images.items() if isinstance(v, int | float)}
    classes = stats.get("classes")
    if isinstance(classes, list):
        status.classes = len(classes)
    elif isinstance(classes, int | float):
        status.classes = int(classes)
    skipped = stats.get("skipped")
    if isinstance(skipped, dict):
        count = skipped.get("count")
        status.skipped = int(count) if isinstance(count, int | float) else None
    elif isinstance(skipped, int | float):
        status.skipped = int(skipped)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def metric_series(events: list[Event]) -> list[dict[str, Any]]:
    """Metric events grouped into series by (name, split), one point per epoch (latest wins)."""
    series: dict[tuple[str, str | None], dict[float, dict[str, Any]]] = {}
    for event in sorted(events, key=lambda e: _number(e.get("time")) or 0.0):
        if event.get("kind") != "metric":
            continue
        name, value, epoch = event.get("name"), event.get("value"), _number(event.get("epoch"))
        if not isinstance(name, str) or epoch is None:
            continue
        split = event.get("split") if isinstance(event.get("split"), str) else None
        point = {"epoch": epoch, "value": _number(value), "time": _number(event.get("time"))}
        series.setdefault((name, split), {})[epoch] = point
    return [
        {
            "name": name,
            "split": split,
            "key": metric_key(name, split),
            "points": [points[e] for e in sorted(points)],
        }
        for (name, split), points in sorted(
            series.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")
        )
    ]


def merge_events(*groups: list[Event]) -> list[Event]:
    """Union of event lists (events.jsonl and live log lines repeat each other), by time."""
    import json

    seen: dict[str, Event] = {}
    for group in groups:
        for event in group:
            seen.setdefault(json.dumps(event, sort_keys=True, separators=(",", ":")), event)
    return sorted(seen.values(), key=lambda e: _number(e.get("time")) or 0.0)
