"""Classify-many as a Ray job, for lists too long to answer inside one REST request.

`python -m jobs.classify_job --store URL --model-id ID --snapshot PREFIX --list KEY --out KEY`

The controller puts the image list (DIGITS' `path [label]` lines) into the object store under
`--list`, submits this entrypoint through the Ray Jobs API (with `entrypoint_num_gpus` when it
wants a GPU: the model runs on CUDA whenever the job's process has one), and follows it like
any other job: progress lines (`KDIGITS_EVENT {"kind":"progress",...}`, jobs.events) on stdout
and in `events.jsonl` beside `--out`, then a `done` event. The answer, the same JSON as the
classify-many REST response (plus `topN` with `--top-n`), is written to `--out`. Paths are
confined to `--data-roots` and URLs to `--allowed-hosts`, as in the REST path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from jobs.evaluation import (
    DEFAULT_TOP_N,
    ImageListError,
    classify_entries,
    parse_image_list,
    top_n_per_category,
)
from jobs.events import EVENTS_FILE, EventLog
from jobs.fetch import parse_allowed_hosts
from jobs.inference import DEFAULT_BATCH_SIZE, DEFAULT_TOP_K, load_model
from jobs.paths import default_roots, parse_roots
from jobs.specs import Phase
from jobs.storage import ObjectNotFound, ObjectStore, open_store

PROGRESS_EVERY_S = 0.5


def events_key(out_key: str) -> str:
    """`events.jsonl` in the folder of the result key."""
    folder, _, _ = out_key.rpartition("/")
    return f"{folder}/{EVENTS_FILE}" if folder else EVENTS_FILE


class _Progress:
    """Throttled progress events with an ETA."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < PROGRESS_EVERY_S:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / done * (total - done) if done else None
        self.log.emit(
            "progress",
            progress=done / total if total else 1.0,
            eta=eta,
            stage="classify",
            images=done,
            total=total,
        )


def run(args: argparse.Namespace, store: ObjectStore, log: EventLog) -> dict[str, Any]:
    try:
        text = store.get_bytes(args.list).decode("utf-8")
    except ObjectNotFound:
        raise ImageListError(f"image_list: {args.list} does not exist in the store") from None
    except UnicodeDecodeError:
        raise ImageListError("image_list: not UTF-8 text") from None
    device = None if args.device == "auto" else args.device
    model = load_model(store, args.snapshot, device=device, batch_size=args.batch_size)
    roots = parse_roots(args.data_roots) if args.data_roots else default_roots()
    hosts = parse_allowed_hosts(args.allowed_hosts)
    entries = parse_image_list(
        text, roots, folder=args.folder or None, classes=model.info.classes, allowed_hosts=hosts
    )
    log.emit("progress", progress=0.0, eta=None, stage="classify", images=0, total=len(entries))
    result = classify_entries(
        model, entries, allowed_hosts=hosts, threads=args.threads, progress=_Progress(log)
    )
    answer = result.to_json(args.top_k)
    if args.top_n:
        answer["topN"] = top_n_per_category(result, args.top_n)
    answer["snapshot"] = args.snapshot
    answer["modelId"] = args.model_id
    answer["epoch"] = model.info.epoch
    return answer


def main(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    log = EventLog(store, events_key(args.out))
    try:
        answer = run(args, store, log)
        store.put_bytes(args.out, json.dumps(answer, separators=(",", ":")).encode())
    except (ValueError, LookupError, OSError) as error:
        message = str(error)
        log.emit("done", phase=Phase.FAILED.value, message=message)
        log.flush()
        print(f"error: {message}", file=sys.stderr)
        return 1
    scored = answer.get("top1Accuracy")
    summary = f"classified {answer['count']} images, {len(answer['errors'])} unreadable"
    if scored is not None:
        summary += f", top-1 accuracy {scored:.4f}"
    log.emit("done", phase=Phase.SUCCEEDED.value, message=summary, result=args.out)
    log.flush()
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Classify an image list with a kdigits model")
    parser.add_argument("--store", default=os.environ.get("KDIGITS_STORE_URL", ""))
    parser.add_argument("--model-id", default="", help="the Model's id (recorded in the answer)")
    parser.add_argument("--snapshot", default="", help="snapshot or pretrained prefix to use")
    parser.add_argument("--list", default="", help="store key of the image list")
    parser.add_argument("--out", default="", help="store key the JSON answer is written to")
    parser.add_argument("--folder", default="", help="folder relative list paths are under")
    parser.add_argument(
        "--data-roots",
        default=os.environ.get("KDIGITS_DATA_ROOTS", ""),
        help="readable directories, ':'-separated; default $KDIGITS_DATA_ROOTS or the defaults",
    )
    parser.add_argument(
        "--allowed-hosts",
        default=os.environ.get("KDIGITS_ALLOWED_URL_HOSTS", ""),
        help="hosts image URLs may name, ','-separated; default $KDIGITS_ALLOWED_URL_HOSTS",
    )
    parser.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    parser.add_argument(
        "--top-n", type=int, default=0, help=f"also top-N per category (DIGITS: {DEFAULT_TOP_N})"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--threads", type=int, default=2, help="image reading threads")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu")
    return parser


def cli(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    for name in ("store", "snapshot", "list", "out"):
        if not getattr(args, name):
            parser.error(f"--{name} is required")
    if args.top_k < 1 or args.top_n < 0 or args.batch_size < 1:
        parser.error("--top-k and --batch-size must be at least 1, --top-n at least 0")
    return main(args)


if __name__ == "__main__":
    raise SystemExit(cli())
