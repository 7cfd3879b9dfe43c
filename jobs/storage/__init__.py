"""Object storage for every artifact: `open_store(url)` picks the implementation.

`file:///abs/dir` is a local directory (the embedded default); `s3://bucket/prefix` is S3 or
MinIO through boto3, with the endpoint from `KDIGITS_S3_ENDPOINT` (or `AWS_ENDPOINT_URL`) and
the usual AWS credential variables. Failures the store cannot retry away raise ObjectStoreError
(an OSError); a missing key raises ObjectNotFound; an unsafe key raises InvalidKey.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from jobs.storage.base import (
    CHUNK_SIZE,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    check_key,
)
from jobs.storage.local import LocalStore

__all__ = [
    "CHUNK_SIZE",
    "InvalidKey",
    "LocalStore",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "check_key",
    "open_store",
]


def open_store(url: str) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"file store URL must be local: {url!r}")
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        from jobs.storage.s3 import S3Store

        return S3Store(bucket=parsed.netloc, prefix=parsed.path.strip("/"))
    raise ValueError(f"unsupported store URL {url!r}: use file:///path or s3://bucket/prefix")
