"""The object-store interface every artifact goes through (datasets, snapshots, events).

Two implementations: a local directory (the embedded default) and S3/MinIO via boto3. Keys
are `/`-separated, relative, ASCII, and never contain `..`; a reader never sees half an object.
"""

from __future__ import annotations

import abc
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHUNK_SIZE = 8 * 1024 * 1024
MAX_KEY_LENGTH = 1024


def _file_mode() -> int:
    """What a plain `open(..., "w")` would create under this process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


class ObjectNotFound(KeyError):
    """The key does not exist in the store."""


class InvalidKey(ValueError):
    """The key is empty, absolute, or would leave the store's root."""


class ObjectStoreError(OSError):
    """The store could not complete an operation (after its retries); the message says why."""


_SEGMENT = re.compile(r"[A-Za-z0-9._=+@,-][A-Za-z0-9._=+@, -]*")


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise InvalidKey."""
    if not isinstance(key, str):
        raise InvalidKey(f"object key must be a string, not {type(key).__name__}")
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidKey(f"invalid object key {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key longer than {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            raise InvalidKey(f"invalid object key {key!r}: bad segment {segment!r}")
    return key


def check_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key optionally ending in `/`."""
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def folder_prefix(prefix: str) -> str:
    """`prefix` as a whole folder (`models/m1` → `models/m1/`), never the whole store."""
    if not prefix.strip("/"):
        raise InvalidKey("refusing to delete the whole store")
    check_prefix(prefix)
    return prefix if prefix.endswith("/") else prefix + "/"


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
        chunks = self.iter_chunks(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, partial_name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".partial", dir=path.parent
        )
        partial = Path(partial_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            os.chmod(partial, FILE_MODE)
            partial.replace(path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Every key that starts with `prefix` (a partial segment matches too), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        """Remove every object in the folder `prefix` (`models/m1` spares `models/m10`).

        The prefix must be non-empty; returns how many objects were removed.
        """
        keys = self.list(folder_prefix(prefix))
        for key in keys:
            self.delete(key)
        return len(keys)
