"""A tiny real job for reconciler tests: prints event lines like jobs.build_dataset/jobs.train.

usage: fake_job.py dataset|model STORE_URL ID [--epochs N] [--sleep S] [--fail-attempts N]
       [--report-failure MESSAGE [--exit-code N]]
It uses the real event emitter and object store, so the controller's tailing, status, metrics
and events.jsonl paths are exercised for real. `--fail-attempts N` crashes (exit 3) while fewer
than N crash markers exist in the store, to test retries.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from jobs import layout  # noqa: E402
from jobs.events import EVENTS_FILE, EventLog  # noqa: E402
from jobs.storage import open_store  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["dataset", "model"])
    parser.add_argument("store")
    parser.add_argument("id")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.2)
    parser.add_argument("--fail-attempts", type=int, default=0)
    parser.add_argument("--report-failure", default="")
    parser.add_argument("--exit-code", type=int, default=1)
    args = parser.parse_args()
    store = open_store(args.store)
    prefix = (layout.dataset_prefix if args.kind == "dataset" else layout.model_prefix)(args.id)
    spec = json.loads(store.get_bytes(f"{prefix}spec.json"))
    print(f"fake {args.kind} job for {args.id}: spec keys {sorted(spec)}", flush=True)
    crashes = [k for k in store.list(f"{prefix}crash-")]
    if len(crashes) < args.fail_attempts:
        store.put_bytes(f"{prefix}crash-{len(crashes)}", b"x")
        print("Traceback (most recent call last):\nRuntimeError: simulated crash", flush=True)
        return 3
    events = EventLog(store, f"{prefix}{EVENTS_FILE}")
    if args.report_failure:
        events.emit("done", phase="Failed", message=args.report_failure)
        events.flush()
        return args.exit_code
    if args.kind == "dataset":
        events.emit("progress", progress=0.5, eta=1.0, stage="building")
        time.sleep(args.sleep)
        stats = {
            "images": {"train": 80, "val": 20},
            "classes": [str(i) for i in range(10)],
            "labels": [str(i) for i in range(10)],
            "skipped": {"count": 1, "reasons": {"unreadable": 1}},
        }
        events.emit("stats", **stats)
        store.put_bytes(f"{prefix}stats.json", json.dumps(stats).encode())
    else:
        for epoch in range(1, args.epochs + 1):
            time.sleep(args.sleep)
            events.emit("metric", name="loss", split="train", value=1.0 / epoch, epoch=epoch)
            events.emit("metric", name="lr", split="train", value=0.01, epoch=epoch)
            events.emit("metric", name="images_per_second", split="train", value=500.0, epoch=epoch)
            events.emit("metric", name="loss", split="val", value=1.2 / epoch, epoch=epoch)
            events.emit(
                "metric", name="accuracy", split="val", value=0.5 + epoch / 100, epoch=epoch
            )
            key = layout.snapshot_prefix(args.id, epoch)
            store.put_bytes(f"{key}model.safetensors", b"weights")
            events.emit("snapshot", epoch=float(epoch), key=key)
            events.emit(
                "progress",
                progress=epoch / args.epochs,
                eta=(args.epochs - epoch) * args.sleep,
                stage="training",
                epoch=float(epoch),
            )
            events.flush()
    events.emit("done", phase="Succeeded", message="")
    events.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
