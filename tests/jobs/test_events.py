"""The event-line protocol: what a job prints is what the controller parses."""

from __future__ import annotations

import io
import math

from jobs.events import EventLog, format_line, make_event, parse_jsonl, parse_line, to_jsonl
from jobs.storage import LocalStore


def test_line_round_trip_and_noise_ignored() -> None:
    event = make_event("metric", epoch=1.5, name="loss", split="train", value=0.31)
    line = "2026-11-26 INFO " + format_line(event)
    assert parse_line(line) == event
    assert parse_line("plain log line") is None
    assert parse_line("KDIGITS_EVENT {not json") is None
    assert parse_line('KDIGITS_EVENT {"kind": "unknown"}') is None


def test_non_finite_values_become_null() -> None:
    event = make_event("metric", name="loss", split="train", value=math.nan, epoch=1)
    assert event["value"] is None
    assert parse_line(format_line(event)) == event


def test_event_log_prints_and_flushes_whole_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = LocalStore(tmp_path)
    out = io.StringIO()
    history = [make_event("progress", progress=0.1, eta=None, stage="train")]
    log = EventLog(store, "models/m/events.jsonl", history=history, out=out)
    log.emit("metric", name="accuracy", split="val", value=0.9, epoch=1)
    log.flush()
    stored = parse_jsonl(store.get_bytes("models/m/events.jsonl"))
    assert [e["kind"] for e in stored] == ["progress", "metric"]
    assert [parse_line(x) for x in out.getvalue().splitlines()] == stored[1:]


def test_torn_last_line_is_ignored() -> None:
    body = to_jsonl([make_event("done", phase="Succeeded", message="")])
    assert len(parse_jsonl(body + b'{"kind": "metric", "val')) == 1
