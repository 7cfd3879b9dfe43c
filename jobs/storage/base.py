"""The object-store interface every artifact goes through (datasets, snapshots, events).

Two implementations: a local directory (the embedded default) and S3/MinIO via boto3. Keys
are `/`-separated, relative, and never contain `..`; a reader never sees half an object.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterator
from pathlib import Path

CHUNK_SIZE = 8 * 1024 * 1024


class ObjectNotFound(KeyError):
    """The key does not exist in the store."""


class InvalidKey(ValueError):
    """The key is empty, absolute, or would leave the store's root."""


_SEGMENT = re.compile(r"[A-Za-z0-9._=+@,-][A-Za-z0-9._=+@, -]*")


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise InvalidKey."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key or len(key) > 1024:
        raise InvalidKey(f"invalid object key {key!r}")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise InvalidKey(f"invalid object key {key!r}: bad segment {segment!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key optionally ending in `/`."""
    if prefix == "":
        return prefix
    check_key(prefix.rstrip("/"))
    return prefix


class ObjectStore(abc.ABC):
    """put/get/stream/list/delete/exists over one root (a directory or a bucket prefix)."""

    url: str

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any object there, atomically."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (multipart for large ones), atomically."""

    @abc.abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object; raises ObjectNotFound."""

    @abc.abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Stream the object in chunks; raises ObjectNotFound before the first chunk."""

    def get_file(self, key: str, path: Path) -> None:
        """Download to a local file (written beside it, then renamed into place)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as out:
            for chunk in self.iter_chunks(key):
                out.write(chunk)
        partial.replace(path)

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under `prefix` (which must be non-empty); returns the count."""
        if not prefix:
            raise InvalidKey("refusing to delete the whole store")
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)
