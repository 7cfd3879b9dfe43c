"""The cluster's object store: S3 or MinIO through boto3.

Every key lives at `<prefix>/<key>` in one bucket. A single PUT, or a multipart upload that is
only completed once every part has arrived, makes an object visible all at once, and one GET
returns one version, so a reader never sees half an object. When a stream breaks mid-object it
resumes with a ranged GET pinned to the first response's ETag (`If-Match`), so a resumed read
cannot splice two versions together. botocore retries throttling (503 SlowDown) and transient
failures (5xx, dropped connections, timeouts) with backoff; what still fails after the last
attempt surfaces as ObjectStoreError naming the operation and the object.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import boto3
import botocore.session
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from jobs.storage.base import (
    CHUNK_SIZE,
    MAX_KEY_LENGTH,
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    check_key,
    check_prefix,
    folder_prefix,
)

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3 refuses smaller parts (except the last one)
DEFAULT_MULTIPART_THRESHOLD = 64 * MiB
DEFAULT_PART_SIZE = 16 * MiB
DELETE_BATCH = 1000  # the most keys one DeleteObjects call accepts
RetryMode = Literal["standard", "adaptive"]

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_MISSING_BUCKET_CODES = frozenset({"NoSuchBucket", "NotFound", "404"})
# What a broken response body raises; the read resumes where it stopped.
_STREAM_ERRORS = (IncompleteReadError, ReadTimeoutError, HTTPClientError, BotoConnectionError)


def resolve_endpoint(endpoint_url: str | None = None) -> str | None:
    """The argument, else `KDIGITS_S3_ENDPOINT`, else `AWS_ENDPOINT_URL`, else AWS itself."""
    return (
        endpoint_url
        or os.environ.get("KDIGITS_S3_ENDPOINT")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )


_loader_lock = threading.Lock()
_shared_loader: Any = None


def _new_session() -> boto3.session.Session:
    """A fresh session (credentials and region read now) that shares the parsed API models.

    Parsing botocore's S3 model is most of the cost of a new client; every store in the process
    reuses the first session's loader instead of parsing it again.
    """
    global _shared_loader
    core = botocore.session.get_session()
    with _loader_lock:
        if _shared_loader is None:
            _shared_loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _shared_loader)
    return boto3.session.Session(botocore_session=core)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(ObjectStore):
    """One bucket prefix as an object store; safe to share across threads and to pickle."""

    delete_batch = DELETE_BATCH
    list_page_size = 1000  # S3's own maximum per ListObjectsV2 page

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        region_name: str | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 8,
        max_attempts: int = 10,
        retry_mode: RetryMode = "standard",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum)")
        if multipart_threshold < 1 or max_concurrency < 1 or max_attempts < 1:
            raise ValueError("multipart_threshold, max_concurrency and max_attempts must be >= 1")
        if retry_mode not in ("standard", "adaptive"):
            raise ValueError(f"retry_mode must be 'standard' or 'adaptive', not {retry_mode!r}")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = resolve_endpoint(endpoint_url)
        self.region_name = region_name
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.retry_mode: RetryMode = retry_mode
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._root = f"{prefix}/" if prefix else ""
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint_url={self.endpoint_url!r})"

    # Pickling (for Ray tasks) carries the settings; each process makes its own client.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The underlying boto3 S3 client, made on first use."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        session = _new_session()
        config = Config(
            retries={"total_max_attempts": self.max_attempts, "mode": self.retry_mode},
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_pool_connections=max(10, self.max_concurrency + 2),
            tcp_keepalive=True,
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region_name or session.region_name or "us-east-1",
            config=config,
        )

    def _transfer_config(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.part_size,
            max_concurrency=self.max_concurrency,
            use_threads=True,
            preferred_transfer_client="classic",
        )

    def close(self) -> None:
        """Release the client's pooled connections (a later call makes a new client)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _full(self, key: str) -> str:
        full = self._root + check_key(key)
        if len(full.encode()) > MAX_KEY_LENGTH:
            raise InvalidKey(f"object key {full!r} is longer than S3 allows")
        return full

    def _where(self, key: str | None) -> str:
        return f"{self.url}/{key}" if key else self.url

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None, *, not_found: bool = False) -> Iterator[None]:
        """Map boto3 errors: missing key → ObjectNotFound, anything else → ObjectStoreError."""
        try:
            yield
        except ClientError as exc:
            if not_found and key is not None and _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            raise ObjectStoreError(f"{action} {self._where(key)} failed: {exc}") from exc
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise ObjectStoreError(f"{action} {self._where(key)} failed: {exc}") from exc

    def create_bucket_if_missing(self) -> bool:
        """Create the bucket unless it exists; True when this call created it."""
        with self._errors("check bucket", None):
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return False
            except ClientError as exc:
                if _error_code(exc) not in _MISSING_BUCKET_CODES:
                    raise
        region = self.client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        with self._errors("create bucket", None):
            try:
                self.client.create_bucket(**kwargs)
            except ClientError as exc:
                if _error_code(exc) in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return False
                raise
        return True

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        with self._errors("put", key):
            if len(data) >= self.multipart_threshold:
                self.client.upload_fileobj(
                    io.BytesIO(data), self.bucket, full, Config=self._transfer_config()
                )
            else:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=bytes(data))

    def put_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        path = Path(path)
        with path.open("rb"):  # a missing file or a folder fails here, as it does locally
            pass
        with self._errors("put", key):
            self.client.upload_file(str(path), self.bucket, full, Config=self._transfer_config())

    def get_bytes(self, key: str) -> bytes:
        return b"".join(self.iter_chunks(key))

    def iter_chunks(self, key: str, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        full = self._full(key)
        with self._errors("get", key, not_found=True):
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        return self._stream(key, full, response, chunk_size)

    def _stream(
        self, key: str, full: str, response: dict[str, Any], chunk_size: int
    ) -> Iterator[bytes]:
        etag = response["ETag"]
        total = int(response["ContentLength"])
        body = response["Body"]
        offset = 0
        breaks = 0
        try:
            while offset < total:
                try:
                    chunk = body.read(min(chunk_size, total - offset))
                    if not chunk:
                        raise IncompleteReadError(actual_bytes=offset, expected_bytes=total)
                except _STREAM_ERRORS as exc:
                    breaks += 1
                    if breaks >= self.max_attempts:
                        raise ObjectStoreError(
                            f"get {self._where(key)} failed: the stream broke {breaks} times,"
                            f" last at byte {offset} of {total}: {exc}"
                        ) from exc
                    body.close()
                    body = self._resume(key, full, etag, offset)
                    continue
                offset += len(chunk)
                yield chunk
            if breaks == 0:
                # Reading past the end makes botocore check the length and any checksum.
                with self._errors("get", key):
                    body.read()
        finally:
            body.close()

    def _resume(self, key: str, full: str, etag: str, offset: int) -> Any:
        """The rest of the same version from `offset`; ObjectStoreError if it was replaced."""
        try:
            with self._errors("resume get", key):
                response = self.client.get_object(
                    Bucket=self.bucket, Key=full, Range=f"bytes={offset}-", IfMatch=etag
                )
        except ObjectStoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and _error_code(cause) in (
                "PreconditionFailed",
                *_NOT_FOUND_CODES,
            ):
                raise ObjectStoreError(
                    f"get {self._where(key)} failed: the object changed or vanished while"
                    f" being read (at byte {offset})"
                ) from cause
            raise
        return response["Body"]

    def exists(self, key: str) -> bool:
        full = self._full(key)
        with self._errors("check", key):
            try:
                self.client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES:
                    return False
                raise
        return True

    def _raw_keys(self, full_prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        with self._errors("list", full_prefix[len(self._root) :] or None):
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=full_prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"]

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys = []
        for full in self._raw_keys(self._root + prefix):
            key = full[len(self._root) :]
            with contextlib.suppress(InvalidKey):  # folder markers and other foreign names
                keys.append(check_key(key))
        return sorted(keys)

    def delete(self, key: str) -> None:
        full = self._full(key)
        with self._errors("delete", key):
            self.client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        folder = folder_prefix(prefix)
        doomed = list(self._raw_keys(self._root + folder))
        for start in range(0, len(doomed), self.delete_batch):
            batch = doomed[start : start + self.delete_batch]
            with self._errors("delete", folder):
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise ObjectStoreError(
                    f"delete {self._where(folder)} failed for {len(errors)} objects, first"
                    f" {first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
                )
        return len(doomed)
