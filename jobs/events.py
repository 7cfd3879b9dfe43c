"""The event-line protocol: how a job tells the controller about progress and metrics.

A job prints one JSON object per line behind `KDIGITS_EVENT ` on stdout (the controller tails
it through the Ray Jobs API) and keeps the same events in `events.jsonl` beside its artifacts,
rewritten whole at each validation and snapshot so a restarted controller can rebuild status
and metric series from storage. This module is the one emitter and the one parser.

Event kinds and their fields:
- `progress`: `progress` (0..1), `eta` (seconds or null), `stage`, optional `epoch`
- `metric`: `name` (loss, accuracy, lr, images_per_second...), `split` (train, val, test),
  `value`, `epoch`
- `snapshot`: `epoch`, `key` (object-store prefix of the snapshot)
- `stats`: dataset statistics (`images` per split, `classes`, `skipped`)
- `done`: `phase` (Succeeded or Failed), `message`
Every event carries `kind` and `time` (Unix seconds).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Protocol, TextIO

PREFIX = "KDIGITS_EVENT "
EVENTS_FILE = "events.jsonl"
KINDS = frozenset({"progress", "metric", "snapshot", "stats", "done"})

Event = dict[str, Any]


class _Store(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...


def make_event(kind: str, **fields: Any) -> Event:
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    event: Event = {"kind": kind, "time": round(time.time(), 3)}
    for name, value in fields.items():
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # JSON has no NaN; a diverged loss is reported as null
        event[name] = value
    return event


def format_line(event: Event) -> str:
    return PREFIX + json.dumps(event, separators=(",", ":"), sort_keys=True)


def parse_line(line: str) -> Event | None:
    """The event on a log line, or None for any other line (or a garbled event)."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    if not isinstance(event, dict) or event.get("kind") not in KINDS:
        return None
    return event


def parse_lines(lines: Iterable[str]) -> Iterator[Event]:
    for line in lines:
        event = parse_line(line)
        if event is not None:
            yield event


def parse_jsonl(data: bytes) -> list[Event]:
    """Events from an `events.jsonl` body; a torn last line is ignored."""
    events: list[Event] = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and event.get("kind") in KINDS:
            events.append(event)
    return events


def to_jsonl(events: Iterable[Event]) -> bytes:
    return "".join(
        json.dumps(e, separators=(",", ":"), sort_keys=True) + "\n" for e in events
    ).encode()


class EventLog:
    """Prints events as lines and keeps them for `events.jsonl` in the object store.

    `flush()` rewrites the whole file atomically (object stores have no append); a resumed
    job starts from the events already stored so the history stays continuous.
    """

    def __init__(
        self,
        store: _Store | None = None,
        key: str | None = None,
        history: list[Event] | None = None,
        out: TextIO | None = None,
    ) -> None:
        self._store = store
        self._key = key
        self._events: list[Event] = list(history or [])
        self._out = out
        self._lock = threading.Lock()

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def emit(self, kind: str, **fields: Any) -> Event:
        event = make_event(kind, **fields)
        with self._lock:
            self._events.append(event)
        out = self._out or sys.stdout
        out.write(format_line(event) + "\n")
        out.flush()
        return event

    def flush(self) -> None:
        if self._store is None or self._key is None:
            return
        with self._lock:
            body = to_jsonl(self._events)
        self._store.put_bytes(self._key, body)
