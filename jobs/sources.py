"""List a dataset source into labelled entries, and read an entry's bytes on a worker.

A source is one of DIGITS' three: a folder with one sub-folder per class, text files of
`path label` lines with a labels file, or an S3 prefix laid out like a folder
(`<prefix>/train/<class>/...`, optionally `val/` and `test/`). Listing turns it into a
`Listing`: the class names and, for each split the source gives explicitly (train always,
val and test when separate), `(location, label)` entries. A location is a local path
(confined to the data roots by jobs.paths) or an object key. Readers are small picklable
objects that the Ray tasks use to fetch the bytes themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from jobs.images import (
    DEFAULT_LIMITS,
    REASON_NOT_FOUND,
    REASON_TOO_LARGE,
    REASON_UNREADABLE,
    DecodeLimits,
    ImageRejected,
    has_image_extension,
    read_image_file,
)
from jobs.paths import PathNotAllowed, confine, is_within
from jobs.specs import DatasetSource, FolderSource, S3Source, TextfileSource

MAX_ENTRIES = 20_000_000
MAX_LIST_FILE_BYTES = 1024 * 1024 * 1024
MAX_LABELS = 100_000
MAX_FOLDER_DEPTH = 32
REASON_OUTSIDE_ROOTS = "outside the data roots"
REASON_UNKNOWN_CLASS = "not in the training set"
REASON_BAD_LINE = "malformed list line"
REASON_BAD_LABEL = "label out of range"

_LIST_LINE = re.compile(r"^(.*\S)\s+(-?\d+)\s*$")


class SourceError(Exception):
    """The source cannot be listed (missing folder, path outside the roots, no classes)."""


class Entry(NamedTuple):
    """One image: where it is and its class index into `Listing.labels` (a cheap tuple)."""

    location: str
    label: int


@dataclass
class Listing:
    """What a source holds: class names, entries per given split, and what was refused."""

    labels: list[str]
    splits: dict[str, list[Entry]]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored_classes: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per separate val/test split: classes absent from train, with their image counts."""


class Reader(Protocol):
    def read(self, location: str) -> bytes: ...

    def warm(self) -> None:
        """Make whatever the first read would otherwise make (clients, connections)."""


@dataclass(frozen=True)
class FileReader:
    """Reads local files (locations are paths already confined by the listing)."""

    limits: DecodeLimits = DEFAULT_LIMITS

    def read(self, location: str) -> bytes:
        return read_image_file(location, self.limits)

    def warm(self) -> None:
        return None


_S3_CLIENTS: dict[tuple[str | None, str | None], Any] = {}


def s3_client(endpoint: str | None, region: str | None = None) -> Any:
    """A boto3 S3 client, one per endpoint per process; credentials from the environment."""
    key = (endpoint, region)
    client = _S3_CLIENTS.get(key)
    if client is None:
        import boto3
        from botocore.config import Config

        config = Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=16)
        client = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)
        _S3_CLIENTS[key] = client
    return client


def s3_endpoint(source: S3Source) -> str | None:
    """The spec's endpoint, else the job environment's (`KDIGITS_S3_ENDPOINT`, AWS_ENDPOINT_URL)."""
    return (
        source.endpoint
        or os.environ.get("KDIGITS_S3_ENDPOINT")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


@dataclass(frozen=True)
class S3Reader:
    """Reads objects of one bucket, refusing objects over the size cap before downloading."""

    bucket: str
    endpoint: str | None
    limits: DecodeLimits = DEFAULT_LIMITS

    def warm(self) -> None:
        s3_client(self.endpoint)

    def read(self, location: str) -> bytes:
        client = s3_client(self.endpoint)
        try:
            response = client.get_object(Bucket=self.bucket, Key=location)
        except client.exceptions.ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ImageRejected(REASON_NOT_FOUND) from None
            if code in ("AccessDenied", "403"):
                raise ImageRejected(REASON_UNREADABLE, code) from None
            raise  # throttling or an outage that outlived botocore's retries: fail the task
        body = response["Body"]
        try:
            if int(response.get("ContentLength", 0)) > self.limits.max_bytes:
                raise ImageRejected(REASON_TOO_LARGE, f"{response['ContentLength']} bytes")
            data: bytes = body.read(self.limits.max_bytes + 1)
        finally:
            body.close()
        if len(data) > self.limits.max_bytes:
            raise ImageRejected(REASON_TOO_LARGE)
        return data


def make_reader(source: DatasetSource, limits: DecodeLimits = DEFAULT_LIMITS) -> Reader:
    if source.s3 is not None:
        return S3Reader(bucket=source.s3.bucket, endpoint=s3_endpoint(source.s3), limits=limits)
    return FileReader(limits=limits)


def list_source(source: DatasetSource, roots: Sequence[Path]) -> Listing:
    """The source's classes and entries; raises SourceError for a source that cannot be used."""
    try:
        if source.folder is not None:
            return list_folder_source(source.folder, roots)
        if source.textfile is not None:
            return list_textfile_source(source.textfile, roots)
        if source.s3 is not None:
            return list_s3_source(source.s3)
    except PathNotAllowed as error:
        raise SourceError(str(error)) from None
    raise SourceError("source: no folder, textfile or s3 source given")


# --------------------------------------------------------------------------- folders


def _confined_dir(path: str, roots: Sequence[Path], what: str) -> Path:
    resolved = confine(path, roots, what=what)
    if not resolved.exists():
        raise SourceError(f"{what}: folder {path} does not exist")
    if not resolved.is_dir():
        raise SourceError(f"{what}: {path} is not a folder")
    return resolved


def walk_images(top: Path, roots: Sequence[Path], skipped: list[tuple[str, str]]) -> Iterator[str]:
    """Image files below `top` (sorted, recursive, following only links that stay in roots)."""
    stack: list[tuple[str, int]] = [(str(top), 0)]
    seen: set[str] = {str(top)}
    while stack:
        folder, depth = stack.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=_entry_name)
        except OSError:
            skipped.append((folder, REASON_UNREADABLE))
            continue
        subfolders: list[str] = []
        for entry in entries:
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not any(is_within(target, root) for root in roots):
                    skipped.append((entry.path, REASON_OUTSIDE_ROOTS))
                elif target.is_dir():
                    subfolders.append(str(target))
                elif target.is_file() and has_image_extension(entry.name):
                    yield str(target)
            elif entry.is_dir(follow_symlinks=False):
                subfolders.append(entry.path)
            elif has_image_extension(entry.name) and entry.is_file(follow_symlinks=False):
                yield entry.path
        if depth < MAX_FOLDER_DEPTH:
            for sub in reversed(subfolders):
                if sub not in seen:
                    seen.add(sub)
                    stack.append((sub, depth + 1))


def _entry_name(entry: os.DirEntry[str]) -> str:
    return entry.name


def class_folders(top: Path, roots: Sequence[Path]) -> dict[str, Path]:
    """Class name -> folder, for the sub-folders of `top` (links must stay in the roots)."""
    classes: dict[str, Path] = {}
    for entry in sorted(os.scandir(top), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_symlink():
            path = path.resolve()
            if not any(is_within(path, root) for root in roots):
                continue
        if path.is_dir():
            classes[entry.name] = path
    return classes


def list_folder_source(source: FolderSource, roots: Sequence[Path]) -> Listing:
    train_dir = _confined_dir(source.train, roots, "source.folder.train")
    classes = class_folders(train_dir, roots)
    if not classes:
        raise SourceError(f"source.folder.train: {source.train} has no class sub-folders")
    labels = sorted(classes)
    listing = Listing(labels=labels, splits={})
    listing.splits["train"] = _folder_entries(classes, labels, roots, listing, "train")
    for split, path in (("val", source.val), ("test", source.test)):
        if path is None:
            continue
        split_dir = _confined_dir(path, roots, f"source.folder.{split}")
        split_classes = class_folders(split_dir, roots)
        unknown = sorted(set(split_classes) - set(labels))
        if unknown:
            listing.ignored_classes[split] = {
                name: sum(1 for _ in walk_images(split_classes[name], roots, listing.skipped))
                for name in unknown
            }
        known = {name: folder for name, folder in split_classes.items() if name in classes}
        listing.splits[split] = _folder_entries(known, labels, roots, listing, split)
    return listing


def _folder_entries(
    classes: dict[str, Path],
    labels: list[str],
    roots: Sequence[Path],
    listing: Listing,
    split: str,
) -> list[Entry]:
    index = {name: i for i, name in enumerate(labels)}
    entries: list[Entry] = []
    for name in sorted(classes):
        for path in walk_images(classes[name], roots, listing.skipped):
            entries.append(Entry(path, index[name]))
            if len(entries) > MAX_ENTRIES:
                raise SourceError(f"source.folder.{split}: more than {MAX_ENTRIES} images")
    return entries


# --------------------------------------------------------------------------- text files


def _read_text(path: str, roots: Sequence[Path], what: str) -> tuple[Path, list[str]]:
    resolved = confine(path, roots, what=what)
    if not resolved.is_file():
        raise SourceError(f"{what}: file {path} does not exist")
    if resolved.stat().st_size > MAX_LIST_FILE_BYTES:
        raise SourceError(f"{what}: {path} is larger than {MAX_LIST_FILE_BYTES} bytes")
    return resolved, resolved.read_text(encoding="utf-8", errors="replace").splitlines()


def read_labels_file(path: str, roots: Sequence[Path]) -> list[str]:
    """Class names, one per line (surrounding blanks and trailing empty lines dropped)."""
    _, lines = _read_text(path, roots, "source.textfile.labels")
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise SourceError(f"source.textfile.labels: {path} lists no classes")
    if len(labels) > MAX_LABELS:
        raise SourceError(f"source.textfile.labels: more than {MAX_LABELS} classes")
    return labels


def parse_list_line(line: str) -> tuple[str, int] | None:
    """`path label` -> (path, label); the path may contain spaces. None for a bad line."""
    match = _LIST_LINE.match(line.strip())
    if match is None:
        return None
    return match.group(1), int(match.group(2))


def list_textfile_source(source: TextfileSource, roots: Sequence[Path]) -> Listing:
    labels = read_labels_file(source.labels, roots)
    base = None
    if source.root is not None:
        base = _confined_dir(source.root, roots, "source.textfile.root")
    listing = Listing(labels=labels, splits={})
    for split, path in (("train", source.train), ("val", source.val), ("test", source.test)):
        if path is None:
            continue
        what = f"source.textfile.{split}"
        list_path, lines = _read_text(path, roots, what)
        line_base = base or list_path.parent
        entries: list[Entry] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parsed = parse_list_line(line)
            if parsed is None:
                listing.skipped.append((f"{path}:{number}", REASON_BAD_LINE))
                continue
            image_path, label = parsed
            if not 0 <= label < len(labels):
                listing.skipped.append((f"{path}:{number}", REASON_BAD_LABEL))
                continue
            try:
                resolved = confine(image_path, roots, base=line_base, what=what)
            except PathNotAllowed:
                listing.skipped.append((image_path, REASON_OUTSIDE_ROOTS))
                continue
            entries.append(Entry(str(resolved), label))
            if len(entries) > MAX_ENTRIES:
                raise SourceError(f"{what}: more than {MAX_ENTRIES} images")
        listing.splits[split] = entries
    return listing


# --------------------------------------------------------------------------- S3


def _s3_keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield str(item["Key"])


def list_s3_source(
    source: S3Source, client_factory: Callable[[str | None], Any] = s3_client
) -> Listing:
    client = client_factory(s3_endpoint(source))
    base = source.prefix.strip("/")
    base = f"{base}/" if base else ""
    where = f"s3://{source.bucket}/{base}"
    per_split: dict[str, dict[str, list[str]]] = {}
    try:
        for split in ("train", "val", "test"):
            split_prefix = f"{base}{split}/"
            classes: dict[str, list[str]] = {}
            for key in _s3_keys(client, source.bucket, split_prefix):
                rest = key[len(split_prefix) :]
                if "/" not in rest or not has_image_extension(rest):
                    continue
                name = rest.split("/", 1)[0]
                if name.startswith("."):
                    continue
                classes.setdefault(name, []).append(key)
            if classes:
                per_split[split] = classes
    except Exception as error:  # endpoint down, no such bucket, access denied
        raise SourceError(f"source.s3: cannot list {where}: {error}") from None
    if "train" not in per_split:
        raise SourceError(f"source.s3: no images under {where}train/<class>/")
    labels = sorted(per_split["train"])
    index = {name: i for i, name in enumerate(labels)}
    listing = Listing(labels=labels, splits={})
    for split, classes in per_split.items():
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            listing.ignored_classes[split] = {name: len(classes[name]) for name in unknown}
        entries = [
            Entry(key, index[name])
            for name in sorted(classes)
            if name in index
            for key in sorted(classes[name])
        ]
        if len(entries) > MAX_ENTRIES:
            raise SourceError(f"source.s3: more than {MAX_ENTRIES} images under {where}{split}/")
        listing.splits[split] = entries
    return listing
