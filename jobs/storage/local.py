"""The embedded default's object store: a directory on local disk.

Writes go to a hidden temporary file in the target folder, are flushed to disk, and are renamed
into place, so a reader sees the old object or the new one, never half of one. Temporary names
contain `~`, which no key may contain, so they never show up in a listing and no key can
collide with one. Keys cannot leave the root, not even through a symlink planted inside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from jobs.storage.base import (
    CHUNK_SIZE,
    FILE_MODE,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    check_key,
    check_prefix,
)

_TMP_PREFIX = ".~tmp-"
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
_MKSTEMP_TRIES = 5


def _is_key(name: str) -> bool:
    try:
        check_key(name)
    except InvalidKey:
        return False
    return True


class LocalStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        if not self._inside(path):
            raise InvalidKey(f"key {key!r} leaves the store root")
        return path

    def _temp_file(self, folder: Path) -> tuple[int, Path]:
        failures = 0
        while True:
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)
                return fd, Path(name)
            except FileNotFoundError:
                # A concurrent delete pruned the folder between mkdir and mkstemp.
                failures += 1
                if failures >= _MKSTEMP_TRIES:
                    raise

    def _commit(self, key: str, fill: Callable[[BinaryIO], None]) -> None:
        """Write through `fill` into a temporary file, make it durable, rename it into place."""
        path = self._path(key)
        fd, tmp = self._temp_file(path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)

    def put_bytes(self, key: str, data: bytes) -> None:
        def fill(handle: BinaryIO) -> None:
            handle.write(data)

        self._commit(key, fill)

    def put_file(self, key: str, path: Path) -> None:
        with Path(path).open("rb") as source:
            self._commit(key, lambda handle: shutil.copyfileobj(source, handle, CHUNK_SIZE))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except _MISSING:
            raise ObjectNotFound(key) from None

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        try:
            handle = self._path(key).open("rb")
        except _MISSING:
            raise ObjectNotFound(key) from None
        return _read_chunks(handle, chunk_size)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        folder, _, partial = prefix.rpartition("/")
        start = self.root / folder if folder else self.root
        if not start.is_dir() or not self._inside(start):
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(start):
            here = Path(dirpath)
            top = here == start
            dirnames[:] = [d for d in dirnames if _is_key(d) and (not top or d.startswith(partial))]
            rel_dir = here.relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix) or not _is_key(name):
                    continue
                if (here / name).is_symlink() and not self._inside(here / name):
                    continue
                keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except _MISSING:
            return
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _read_chunks(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the directory that holds the new entry."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
