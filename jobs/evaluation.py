"""Classifying many images and scoring the answers, as DIGITS' "Classify Many" and "Top N" did.

Input is DIGITS' image list: one image per line, `path [label]`, where a trailing integer is the
label's index in labels.txt and a relative path is joined to the optional image folder. Every
path is confined to the data roots (jobs.paths) and URLs to the allowed hosts (jobs.fetch) while
the list is parsed, so a bad line refuses the whole request before any image is read. Images
that cannot be read or decoded are reported per path, not fatal.

Scores, over the images that carry a label: top-1 and top-5 accuracy, the confusion matrix
(rows are the true class, columns the predicted one, both in labels.txt order) and per-class
accuracy (the diagonal over the row sum; None for a class with no image). Top-N per category
gives, for each class, the N images (DIGITS' default 9) with the highest probability of it.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from jobs.fetch import DEFAULT_FETCH_LIMITS, FetchError, FetchLimits, check_url, fetch_url, is_url
from jobs.images import DEFAULT_LIMITS, DecodeLimits, ImageRejected, read_image_file
from jobs.inference import DEFAULT_TOP_K, ImageError, LoadedModel, top_k_predictions
from jobs.paths import PathNotAllowed, confine

LIST_LINE = re.compile(r"(.*\S)\s+(\d+)$")  # DIGITS: a path, then an optional integer label
MAX_LIST_LINES = 1_000_000
MAX_LIST_BYTES = 256 * 1024 * 1024
DEFAULT_TOP_N = 9  # DIGITS' top-N per category
IN_PROCESS_MAX_IMAGES = 2000
"""Lists longer than this are better run as a Ray job (`python -m jobs.classify_job`)."""

Progress = Callable[[int, int], None]


class ImageListError(ValueError):
    """The image list (or folder) is malformed or names something not allowed."""


@dataclass(frozen=True)
class ListEntry:
    """One image of a list: `path` as DIGITS keyed it, what to read, and the true class."""

    path: str
    location: str
    label: int | None = None
    is_url: bool = False


class _Confiner:
    """jobs.paths.confine for many files: each folder is resolved once, each file checked.

    A file that is not a symlink resolves to its resolved folder plus its name, so only the
    folder needs the full resolution; a symlinked file, an unusual path or any refusal goes
    through `confine` itself (which then also words the error).
    """

    def __init__(self, roots: Sequence[Path], base: Path | None) -> None:
        self.roots = roots
        self.base = base
        self.folders: dict[Path, Path] = {}

    def __call__(self, path: str, what: str) -> Path:
        candidate = Path(path)
        unusual = path.startswith("~") or path.endswith("/") or "\x00" in path or not path
        if unusual or ".." in PurePosixPath(path).parts or candidate.name in ("", "."):
            return confine(path, self.roots, base=self.base, what=what)
        if not candidate.is_absolute():
            if self.base is None:
                return confine(path, self.roots, base=self.base, what=what)
            candidate = self.base / candidate
        folder = self.folders.get(candidate.parent)
        if folder is None:
            try:
                folder = confine(candidate.parent, self.roots, what=what)
            except PathNotAllowed:
                return confine(path, self.roots, base=self.base, what=what)
            self.folders[candidate.parent] = folder
        if (folder / candidate.name).is_symlink():
            return confine(path, self.roots, base=self.base, what=what)
        return folder / candidate.name


def parse_image_list(
    text: str,
    roots: Sequence[Path],
    *,
    folder: str | None = None,
    classes: int | None = None,
    allowed_hosts: Sequence[str] = (),
    max_lines: int = MAX_LIST_LINES,
) -> list[ListEntry]:
    """DIGITS' `path [label]` lines as entries; raises ImageListError naming the line."""
    if len(text) > MAX_LIST_BYTES:
        raise ImageListError(f"image_list: longer than {MAX_LIST_BYTES} bytes")
    base: Path | None = None
    if folder:
        try:
            base = confine(folder, roots, what="image_folder")
        except PathNotAllowed as error:
            raise ImageListError(str(error)) from None
        if not base.is_dir():
            raise ImageListError(f"image_folder: {folder} is not a directory")
    confiner = _Confiner(roots, base)
    entries: list[ListEntry] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if len(entries) >= max_lines:
            raise ImageListError(f"image_list: more than {max_lines} images")
        where = f"image_list line {number}"
        match = LIST_LINE.match(line)
        path, label = (match.group(1), int(match.group(2))) if match else (line, None)
        if label is not None and classes is not None and label >= classes:
            raise ImageListError(
                f"{where}: label {label} is not a class index (the model has {classes} classes)"
            )
        if is_url(path):
            try:
                check_url(path, allowed_hosts, what=where)
            except FetchError as error:
                raise ImageListError(str(error)) from None
            entries.append(ListEntry(path, path, label, is_url=True))
            continue
        shown = str(base / path) if base is not None and not Path(path).is_absolute() else path
        try:
            resolved = confiner(path, where)
        except PathNotAllowed as error:
            raise ImageListError(str(error)) from None
        entries.append(ListEntry(shown, str(resolved), label))
    if not entries:
        raise ImageListError("image_list: no images listed")
    return entries


def read_entry(
    entry: ListEntry,
    limits: DecodeLimits = DEFAULT_LIMITS,
    allowed_hosts: Sequence[str] = (),
    fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS,
) -> bytes:
    """The encoded image an entry names; raises ImageError with a short reason."""
    if entry.is_url:
        try:
            return fetch_url(entry.location, allowed_hosts, fetch_limits, what=entry.path)
        except FetchError as error:
            raise ImageError("fetch failed", str(error)) from None
    try:
        return read_image_file(entry.location, limits)
    except ImageRejected as rejected:
        raise ImageError(rejected.reason, f"{entry.path}: {rejected}") from None


def read_image_source(
    *,
    path: str | None = None,
    url: str | None = None,
    roots: Sequence[Path] = (),
    allowed_hosts: Sequence[str] = (),
    limits: DecodeLimits = DEFAULT_LIMITS,
    fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS,
) -> bytes:
    """Classify-one's `image_path` (inside the data roots) or `image_url` (allowed hosts).

    Raises PathNotAllowed, FetchError or ImageError (all ValueError), naming the field.
    """
    if (path is None) == (url is None):
        raise ValueError("give exactly one of image_path and image_url")
    if url is not None:
        return fetch_url(url, allowed_hosts, fetch_limits, what="image_url")
    assert path is not None
    resolved = confine(path, roots, what="image_path")
    try:
        return read_image_file(str(resolved), limits)
    except ImageRejected as rejected:
        raise ImageError(rejected.reason, f"image_path: {path}: {rejected}") from None


@dataclass
class Scores:
    """Accuracy figures over the labelled images."""

    evaluated: int
    top1: float
    top5: float
    confusion: np.ndarray  # int64 [classes, classes]: rows true, columns predicted
    per_class: list[float | None]

    def to_json(self) -> dict[str, Any]:
        return {
            "evaluated": self.evaluated,
            "top1Accuracy": self.top1,
            "top5Accuracy": self.top5,
            "confusionMatrix": self.confusion.tolist(),
            "perClassAccuracy": self.per_class,
        }


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """int64 [classes, classes]; entry [t, p] counts images of class t predicted as p."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (truth.astype(np.int64), predicted.astype(np.int64)), 1)
    return matrix


def score(probabilities: np.ndarray, truth: np.ndarray) -> Scores | None:
    """Scores over the rows whose truth is a class index (>= 0); None when there are none."""
    labelled = truth >= 0
    if not labelled.any():
        return None
    probs, true = probabilities[labelled], truth[labelled].astype(np.int64)
    classes = probabilities.shape[1]
    k = min(5, classes)
    ranked = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top1 = ranked[:, 0] == true
    top5 = (ranked == true[:, None]).any(axis=1)
    matrix = confusion_matrix(true, ranked[:, 0], classes)
    totals = matrix.sum(axis=1)
    per_class = [float(matrix[c, c] / totals[c]) if totals[c] else None for c in range(classes)]
    return Scores(int(len(true)), float(top1.mean()), float(top5.mean()), matrix, per_class)


@dataclass
class ClassifyManyResult:
    """Per-image probabilities of the images that could be read, and the ones that could not."""

    labels: list[str]
    paths: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    truth: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # -1: unlabelled
    errors: dict[str, str] = field(default_factory=dict)

    def scores(self) -> Scores | None:
        return score(self.probabilities, self.truth) if len(self.paths) else None

    def to_json(self, top_k: int = DEFAULT_TOP_K) -> dict[str, Any]:
        """DIGITS' answer: `classifications` {path: [[label, probability] x k]}, and scores."""
        out: dict[str, Any] = {
            "classifications": {
                path: top_k_predictions(row, self.labels, top_k)
                for path, row in zip(self.paths, self.probabilities, strict=True)
            },
            "labels": self.labels,
            "count": len(self.paths),
            "errors": self.errors,
        }
        scores = self.scores()
        if scores is not None:
            out.update(scores.to_json())
        return out


def top_n_per_category(result: ClassifyManyResult, n: int = DEFAULT_TOP_N) -> list[dict[str, Any]]:
    """For each class in labels.txt order, the n images most confidently of that class."""
    categories: list[dict[str, Any]] = []
    count = len(result.paths)
    for index, label in enumerate(result.labels):
        column = result.probabilities[:, index] if count else np.zeros(0, np.float32)
        best = np.argsort(-column, kind="stable")[: max(0, n)]
        categories.append(
            {
                "label": label,
                "images": [
                    {"path": result.paths[int(i)], "probability": float(column[int(i)])}
                    for i in best
                ],
            }
        )
    return categories


Prepared = tuple[list[int], np.ndarray, dict[int, str]]


@dataclass
class _Collector:
    """Gathers finished batches into a ClassifyManyResult, reporting progress."""

    model: LoadedModel
    names: Sequence[str]
    truth: Sequence[int | None] | None
    progress: Progress | None
    paths: list[str] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)
    truths: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    done: int = 0

    def add(self, futures: list[Future[Prepared]]) -> None:
        """Run the network over one batch's finished decodes."""
        kept_all: list[int] = []
        batches: list[np.ndarray] = []
        for future in futures:
            kept, batch, failed = future.result()
            kept_all.extend(kept)
            batches.append(batch)
            for index, message in failed.items():
                self.errors[self.names[index]] = message
            self.done += len(kept) + len(failed)
        if kept_all:
            self.parts.append(self.model.probabilities(np.concatenate(batches)))
            for index in kept_all:
                self.paths.append(self.names[index])
                label = self.truth[index] if self.truth is not None else None
                self.truths.append(-1 if label is None else int(label))
        if self.progress is not None:
            self.progress(self.done, len(self.names))

    def result(self) -> ClassifyManyResult:
        labels = list(self.model.labels)
        return ClassifyManyResult(
            labels=labels,
            paths=self.paths,
            probabilities=(
                np.concatenate(self.parts)
                if self.parts
                else np.zeros((0, len(labels)), dtype=np.float32)
            ),
            truth=np.asarray(self.truths, dtype=np.int64),
            errors=self.errors,
        )


def classify_sources(
    model: LoadedModel,
    names: Sequence[str],
    load: Callable[[int], bytes],
    truth: Sequence[int | None] | None = None,
    *,
    threads: int = 2,
    progress: Progress | None = None,
) -> ClassifyManyResult:
    """Classify `len(names)` images whose bytes `load(i)` returns, batch by batch.

    Reading and decoding run in `threads` threads, one batch ahead of the network.
    """
    shape = (model.image.channels, model.image.height, model.image.width)
    workers = max(1, threads)

    def prepare(start: int, stop: int) -> Prepared:
        batch = np.empty((stop - start, *shape), dtype=np.uint8)
        kept: list[int] = []
        failed: dict[int, str] = {}
        for index in range(start, stop):
            try:
                batch[len(kept)] = model.preprocess(load(index))
                kept.append(index)
            except ImageError as error:
                failed[index] = str(error)
        return kept, batch[: len(kept)], failed

    collector = _Collector(model, names, truth, progress)
    ahead: deque[list[Future[Prepared]]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(names), model.batch_size):
            stop = min(len(names), start + model.batch_size)
            step = -(-(stop - start) // workers)
            ahead.append(
                [pool.submit(prepare, s, min(stop, s + step)) for s in range(start, stop, step)]
            )
            if len(ahead) > 1:
                collector.add(ahead.popleft())
        while ahead:
            collector.add(ahead.popleft())
    return collector.result()


def classify_entries(
    model: LoadedModel,
    entries: Sequence[ListEntry],
    *,
    limits: DecodeLimits | None = None,
    allowed_hosts: Sequence[str] = (),
    fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS,
    threads: int = 2,
    progress: Progress | None = None,
) -> ClassifyManyResult:
    """Classify a parsed image list (see parse_image_list)."""
    caps = limits or model.limits

    def load(index: int) -> bytes:
        return read_entry(entries[index], caps, allowed_hosts, fetch_limits)

    return classify_sources(
        model,
        [e.path for e in entries],
        load,
        [e.label for e in entries],
        threads=threads,
        progress=progress,
    )


def classify_uploads(
    model: LoadedModel,
    uploads: Sequence[tuple[str, bytes]],
    labels: Sequence[int | None] | None = None,
    *,
    threads: int = 2,
) -> ClassifyManyResult:
    """Classify several uploaded images, keyed by their file names."""
    return classify_sources(
        model, [name for name, _ in uploads], lambda i: uploads[i][1], labels, threads=threads
    )
