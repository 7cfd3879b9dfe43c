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

import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.fetch import DEFAULT_FETCH_LIMITS, FetchError, FetchLimits, check_url, fetch_url, is_url
from jobs.images import DEFAULT_LIMITS, DecodeLimits, ImageRejected, read_image_file
from jobs.inference import DEFAULT_TOP_K, ImageError, LoadedModel, top_k_many
from jobs.paths import PathNotAllowed, confine

LIST_LINE = re.compile(r"(.*\S)\s+(\d+)$")  # DIGITS: a path, then an optional integer label
MAX_LIST_LINES = 1_000_000
MAX_LIST_BYTES = 256 * 1024 * 1024
DEFAULT_TOP_N = 9  # DIGITS' top-N per category
PREFETCH_BYTES = 64 * 1024 * 1024
"""At most this many encoded bytes are read ahead of the decoding thread (all readers)."""
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
    folder needs the full resolution. A plain path (absolute, or relative to the image folder,
    with no empty, `.` or `..` component) is handled as text, with one lstat for the file;
    anything else, a symlinked file or any refusal goes through `confine` itself (which then
    also words the error).
    """

    def __init__(self, roots: Sequence[Path], base: Path | None) -> None:
        self.roots = roots
        self.base = base
        self.base_text = str(base) if base is not None else None
        self.folders: dict[str, str] = {}

    def __call__(self, path: str, what: str) -> tuple[str, str]:
        """(the path as DIGITS keys it, the resolved file to read); raises PathNotAllowed."""
        parts = path.split("/")
        absolute = not parts[0]
        plain = not _ODD_PARTS.intersection(parts[1:] if absolute else parts)
        if not plain or "\x00" in path or path.startswith("~"):
            return self._confine(path, what)
        if absolute:
            full = path
        elif self.base_text is not None:
            full = os.path.join(self.base_text, path)
        else:
            return self._confine(path, what)
        parent, _, name = full.rpartition("/")
        folder = self.folders.get(parent)
        if folder is None:
            try:
                folder = str(confine(parent or "/", self.roots, what=what))
            except PathNotAllowed:
                return self._confine(path, what)
            self.folders[parent] = folder
        location = os.path.join(folder, name)
        if os.path.islink(location):
            return self._confine(path, what)
        return full, location

    def _confine(self, path: str, what: str) -> tuple[str, str]:
        relative = self.base is not None and not Path(path).is_absolute()
        shown = str(self.base / path) if relative and self.base is not None else path
        return shown, str(confine(path, self.roots, base=self.base, what=what))


_ODD_PARTS = frozenset({"", ".", ".."})


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
        try:
            shown, location = confiner(path, where)
        except PathNotAllowed as error:
            raise ImageListError(str(error)) from None
        entries.append(ListEntry(shown, location, label))
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
            "classifications": dict(
                zip(self.paths, top_k_many(self.probabilities, self.labels, top_k), strict=True)
            ),
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


@dataclass
class _Chunk:
    """One forward batch of images: `pixels[i]` is image `start + i` where `ok[i]`."""

    start: int
    pixels: np.ndarray  # uint8 [n, C, H, W]
    ok: np.ndarray  # bool [n]: False where the image could not be read or decoded
    failed: dict[int, str] = field(default_factory=dict)  # image index -> reason


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

    def add(self, chunk: _Chunk) -> None:
        """Run the network over one decoded batch."""
        for index, message in chunk.failed.items():
            self.errors[self.names[index]] = message
        kept = chunk.ok.nonzero()[0] + chunk.start
        if len(kept):
            pixels = chunk.pixels if len(kept) == len(chunk.ok) else chunk.pixels[chunk.ok]
            self.parts.append(self.model.probabilities(pixels))
            names, truth = self.names, self.truth
            self.paths.extend(names[index] for index in kept.tolist())
            if truth is None:
                self.truths.extend([-1] * len(kept))
            else:
                labels = (truth[index] for index in kept.tolist())
                self.truths.extend(-1 if label is None else int(label) for label in labels)
        self.done += len(chunk.ok)
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


Source = bytes | ImageError | None
"""An image as read ahead: its bytes, why it could not be read, or None (not read yet)."""


def _decode_chunk(
    model: LoadedModel, start: int, sources: Sequence[Source], load: Callable[[int], bytes]
) -> _Chunk:
    """Images `start`, `start + 1`... decoded into one uint8 batch, in the calling thread."""
    count = len(sources)
    chunk = _Chunk(
        start, np.empty((count, *model.pixel_shape), dtype=np.uint8), np.ones(count, dtype=bool)
    )
    for offset, source in enumerate(sources):
        if isinstance(source, ImageError):  # could not be read
            error = source
        else:
            try:
                data = load(start + offset) if source is None else source
                model.preprocess_into(data, chunk.pixels[offset])
                continue
            except ImageError as failed:
                error = failed
        chunk.ok[offset] = False
        chunk.failed[start + offset] = str(error)
    return chunk


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

    `threads` threads read the next batch's bytes (files, URLs: waiting on I/O) while the
    calling thread decodes the current batch straight into one uint8 array and runs the
    network over it as one tensor. Decoding stays on one thread: it is mostly Python (PIL's
    parsing) under the GIL, so two decoding threads only take turns, and on a small machine
    run half as fast as one; the forward pass, for its part, already uses every core and
    slows down when other threads compete with it. The bytes read ahead are capped at
    `PREFETCH_BYTES`; past that the decoding thread reads the rest of the batch itself.
    """
    count = len(names)
    workers = max(1, threads)
    size = max(1, model.batch_size)
    budget = max(1, PREFETCH_BYTES // workers)

    def read(first: int, stop: int) -> list[Source]:
        out: list[Source] = []
        total = 0
        for index in range(first, stop):
            if total > budget:  # the decoding thread loads the rest when it gets there
                out.extend([None] * (stop - index))
                break
            try:
                data = load(index)
            except ImageError as error:
                out.append(error)
                continue
            total += len(data)
            out.append(data)
        return out

    def submit(pool: ThreadPoolExecutor, start: int) -> tuple[int, list[Future[list[Source]]]]:
        stop = min(count, start + size)
        step = -(-(stop - start) // workers)
        slices = range(start, stop, step)
        return start, [pool.submit(read, first, min(stop, first + step)) for first in slices]

    collector = _Collector(model, names, truth, progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = submit(pool, 0) if count else None
        while pending is not None:
            start, futures = pending
            sources = [source for future in futures for source in future.result()]
            stop = start + len(sources)
            pending = submit(pool, stop) if stop < count else None
            collector.add(_decode_chunk(model, start, sources, load))
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
