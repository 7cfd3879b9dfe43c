"""The object-store contract, run against both implementations, plus what each adds.

The same tests run on a local directory and on S3 (boto3 over HTTP to moto's server), so code
written against ObjectStore behaves the same on a laptop and in the cluster. S3 retries and
resumed reads are proven through a real fault-injecting proxy (tests/jobs/storage_faults.py).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import pytest

from jobs.storage import (
    InvalidKey,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    open_store,
)
from jobs.storage.s3 import MIN_PART_SIZE, S3Store
from tests.jobs.storage_faults import (
    HANG,
    INTERNAL_ERROR,
    RESET,
    SLOW_DOWN,
    TRUNCATE_GET,
    Fault,
    FaultProxy,
)

MiB = 1024 * 1024
S3Factory = Callable[..., S3Store]


@pytest.fixture
def s3_factory(s3_endpoint: str) -> Iterator[S3Factory]:
    """Stores on a fresh bucket; keyword arguments override the S3Store settings.

    Without arguments it returns the same default store each time (the one that made the bucket).
    """
    bucket = f"kdigits-test-{uuid.uuid4().hex[:12]}"
    made: list[S3Store] = []

    def make(**overrides: object) -> S3Store:
        if not overrides and made:
            return made[0]
        settings: dict[str, object] = {
            "bucket": bucket,
            "prefix": "kd/run-1",
            "endpoint_url": s3_endpoint,
            "multipart_threshold": MIN_PART_SIZE,
            "part_size": MIN_PART_SIZE,
        }
        settings.update(overrides)
        store = S3Store(**settings)  # type: ignore[arg-type]
        made.append(store)
        return store

    make().create_bucket_if_missing()
    yield make
    for store in made:
        store.close()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    factory: S3Factory = request.getfixturevalue("s3_factory")
    return factory()


# ---------------------------------------------------------------- the contract, both backends


def test_bytes_round_trip(store: ObjectStore) -> None:
    every_byte = bytes(range(256)) * 3
    store.put_bytes("datasets/d1/mean.npy", every_byte)
    store.put_bytes("empty", b"")
    assert store.get_bytes("datasets/d1/mean.npy") == every_byte
    assert store.get_bytes("empty") == b""
    assert b"".join(store.iter_chunks("empty")) == b""


def test_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(300_000))
    store.put_file("models/m1/snapshots/epoch-0001/model.safetensors", source)
    target = tmp_path / "out" / "deep" / "model.safetensors"
    store.get_file("models/m1/snapshots/epoch-0001/model.safetensors", target)
    assert target.read_bytes() == source.read_bytes()
    assert os.listdir(target.parent) == ["model.safetensors"]


def test_put_file_from_a_missing_path_stores_nothing(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file("k", tmp_path / "absent")
    with pytest.raises(IsADirectoryError):
        store.put_file("k", tmp_path)
    assert store.list() == []


def test_get_file_replaces_an_existing_file(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("labels.txt", b"zero\none\n")
    target = tmp_path / "labels.txt"
    target.write_bytes(b"stale contents that are longer than the object")
    store.get_file("labels.txt", target)
    assert target.read_bytes() == b"zero\none\n"


def test_overwrite_replaces_the_object(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("spec.json", b'{"version": 1, "padding": "xxxxxxxxxxxxxxxx"}')
    store.put_bytes("spec.json", b'{"version": 2}')
    assert store.get_bytes("spec.json") == b'{"version": 2}'
    source = tmp_path / "v3.json"
    source.write_bytes(b'{"version": 3}')
    store.put_file("spec.json", source)
    assert store.get_bytes("spec.json") == b'{"version": 3}'
    assert store.list() == ["spec.json"]


def test_list_by_prefix(store: ObjectStore) -> None:
    keys = [
        "a.txt",
        "data.csv",
        "datasets/d-1/spec.json",
        "datasets/d-1/train/shard-00000.bin",
        "datasets/d-10/spec.json",
        "models/m.1/events.jsonl",
    ]
    for key in reversed(keys):
        store.put_bytes(key, key.encode())
    assert store.list() == keys
    assert store.list("datasets/") == keys[2:5]
    assert store.list("datasets/d-1/") == keys[2:4]
    assert store.list("datasets/d-1") == keys[2:5]  # a partial segment matches d-10 too
    assert store.list("datasets/d-1/train/shard-") == [keys[3]]
    assert store.list("da") == keys[1:5]
    assert store.list("models/m.1/events.jsonl") == [keys[5]]
    assert store.list("nothing/") == []
    assert store.list("zz") == []


def test_delete_is_idempotent(store: ObjectStore) -> None:
    store.put_bytes("models/m1/spec.json", b"{}")
    store.put_bytes("models/m1/labels.txt", b"a\n")
    store.delete("models/m1/spec.json")
    assert not store.exists("models/m1/spec.json")
    store.delete("models/m1/spec.json")
    store.delete("never/was/here")
    store.delete("models")  # a folder-like key is not an object: nothing happens
    assert store.list() == ["models/m1/labels.txt"]


def test_delete_prefix_removes_one_folder(store: ObjectStore) -> None:
    for key in ["models/m1/spec.json", "models/m1/snapshots/epoch-0001/model.safetensors"]:
        store.put_bytes(key, b"x")
    store.put_bytes("models/m10/spec.json", b"keep")
    store.put_bytes("models/m1.json", b"keep")
    assert store.delete_prefix("models/m1") == 2
    assert store.list() == ["models/m1.json", "models/m10/spec.json"]
    assert store.delete_prefix("models/m1/") == 0
    assert store.delete_prefix("models/") == 2
    assert store.list() == []
    for everything in ["", "/"]:
        with pytest.raises(InvalidKey):
            store.delete_prefix(everything)


def test_exists(store: ObjectStore) -> None:
    assert not store.exists("datasets/d1/stats.json")
    store.put_bytes("datasets/d1/stats.json", b"{}")
    assert store.exists("datasets/d1/stats.json")
    assert not store.exists("datasets/d1")
    assert not store.exists("datasets/d1/stats.jso")


def test_iter_chunks_streams_a_multi_chunk_object(store: ObjectStore) -> None:
    data = os.urandom(MiB + 123)
    store.put_bytes("big.bin", data)
    chunk_size = 256 * 1024
    chunks = list(store.iter_chunks("big.bin", chunk_size=chunk_size))
    assert b"".join(chunks) == data
    assert len(chunks) >= 5
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)


def test_missing_keys_raise_object_not_found(store: ObjectStore, tmp_path: Path) -> None:
    store.put_bytes("datasets/d1/spec.json", b"{}")
    for missing in ["datasets/d2/spec.json", "datasets/d1", "datasets/d1/spec.json/x"]:
        with pytest.raises(ObjectNotFound):
            store.get_bytes(missing)
        with pytest.raises(ObjectNotFound):
            store.iter_chunks(missing)  # raised by the call itself, before any chunk
        with pytest.raises(ObjectNotFound):
            store.get_file(missing, tmp_path / "out" / "x")
    assert not (tmp_path / "out").exists()


def test_multipart_sized_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "shard.bin"
    source.write_bytes(os.urandom(12 * MiB + 5))
    store.put_file("datasets/d1/train/shard-00000.bin", source)
    target = tmp_path / "back.bin"
    store.get_file("datasets/d1/train/shard-00000.bin", target)
    assert target.read_bytes() == source.read_bytes()


def test_keys_with_dots_and_dashes(store: ObjectStore) -> None:
    keys = ["v1.2.3/model-final.tar.gz", "-lead/trail-", "..a/b..", ".hidden/x.y", "a=b/c@d,e+f"]
    for key in keys:
        store.put_bytes(key, key.encode())
    assert store.list() == sorted(keys)
    for key in keys:
        assert store.get_bytes(key) == key.encode()


BAD_KEYS = [
    "",
    "/etc/passwd",
    "..",
    "../outside",
    "a/../../b",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
    "caf\u00e9.txt",
    "x" * 1025,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
def test_unsafe_keys_are_rejected(store: ObjectStore, key: str, tmp_path: Path) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    operations: list[Callable[[], object]] = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_file(key, source),
        lambda: store.get_bytes(key),
        lambda: store.iter_chunks(key),
        lambda: store.get_file(key, tmp_path / "out"),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ]
    for operation in operations:
        with pytest.raises(InvalidKey):
            operation()
    assert store.list() == []


@pytest.mark.parametrize(
    "prefix", ["/abs", "..", "../x", "a/../b", "a//", "a\\b", "x\x00"], ids=repr
)
def test_unsafe_prefixes_are_rejected(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidKey):
        store.list(prefix)
    with pytest.raises(InvalidKey):
        store.delete_prefix(prefix)


def test_store_survives_pickling(store: ObjectStore) -> None:
    """Ray ships stores to workers by pickling them."""
    store.put_bytes("k", b"v")
    copy = pickle.loads(pickle.dumps(store))  # noqa: S301 - our own bytes
    assert copy.url == store.url
    assert copy.get_bytes("k") == b"v"


def _version(number: int) -> bytes:
    """Version n of the contested object: one repeated byte, a length that differs per version.

    Even versions stay under the 5 MiB multipart threshold, odd ones go over it, so on S3 both
    single PUTs and multipart uploads race the reader.
    """
    size = (6 * MiB if number % 2 else 2 * MiB) + number * 4096
    return bytes([number]) * size


def _whole_version(data: bytes) -> bool:
    return bool(data) and data == _version(data[0])


def test_readers_only_ever_see_whole_versions(store: ObjectStore, tmp_path: Path) -> None:
    key = "obj/blob.bin"
    store.put_bytes(key, _version(1))
    writes = 12
    done = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for number in range(2, writes + 2):
                if number % 3 == 0:
                    staged = tmp_path / f"v{number}.bin"
                    staged.write_bytes(_version(number))
                    store.put_file(key, staged)
                else:
                    store.put_bytes(key, _version(number))
        except BaseException as exc:  # surfaced in the main thread
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[int] = []
    bad: list[str] = []
    while not done.is_set() or len(seen) < 3:
        whole = store.get_bytes(key)
        streamed = b"".join(store.iter_chunks(key, chunk_size=512 * 1024))
        listing = store.list()
        for label, data in (("get_bytes", whole), ("iter_chunks", streamed)):
            if _whole_version(data):
                seen.append(data[0])
            else:
                bad.append(f"{label}: {len(data)} bytes starting {data[:1]!r}")
        if listing != [key]:
            bad.append(f"list: {listing}")
    thread.join()
    assert not failures, failures
    assert not bad, bad[:5]
    assert len(set(seen)) >= 2, f"the reader never overlapped the writer: saw {set(seen)}"
    assert store.get_bytes(key) == _version(writes + 1)


# ---------------------------------------------------------------- local directory only


def test_local_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/b.bin", b"old")
    with pytest.raises(TypeError):
        store.put_bytes("a/b.bin", cast(bytes, object()))  # fails halfway through the write
    with pytest.raises(FileNotFoundError):
        store.put_file("a/c.bin", tmp_path / "no-such-file")
    assert sorted(os.listdir(tmp_path / "store" / "a")) == ["b.bin"]
    assert store.get_bytes("a/b.bin") == b"old"


def test_local_listing_hides_leftover_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/b.bin", b"x")
    (tmp_path / "store" / "a" / ".~tmp-crashed").write_bytes(b"half")
    (tmp_path / "store" / ".~tmp-dir").mkdir()
    (tmp_path / "store" / ".~tmp-dir" / "inner").write_bytes(b"half")
    assert store.list() == ["a/b.bin"]


def test_local_objects_get_ordinary_file_permissions(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("k", b"x")
    store.get_file("k", tmp_path / "copy")
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (tmp_path / "store" / "k", tmp_path / "copy"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_local_symlinks_cannot_leave_the_root(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "store"
    store = LocalStore(root)
    store.put_bytes("inside/real", b"ok")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "leak").symlink_to(outside / "secret")
    (root / "alias").symlink_to(root / "inside" / "real")

    for key in ["escape/secret", "escape/new", "leak"]:
        with pytest.raises(InvalidKey):
            store.get_bytes(key)
        with pytest.raises(InvalidKey):
            store.put_bytes(key, b"overwritten")
        with pytest.raises(InvalidKey):
            store.exists(key)
        with pytest.raises(InvalidKey):
            store.delete(key)
    assert store.list("escape/") == []
    assert store.list() == ["alias", "inside/real"]
    assert store.get_bytes("alias") == b"ok"
    assert os.listdir(outside) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store((tmp_path / "s").as_uri())
    assert isinstance(store, LocalStore)
    store.put_bytes("k", b"v")
    assert (tmp_path / "s" / "k").read_bytes() == b"v"
    with pytest.raises(ValueError):
        open_store("file://remote-host/x")
    with pytest.raises(ValueError):
        open_store("ftp://host/x")


# ---------------------------------------------------------------- S3 only


def test_s3_large_uploads_are_multipart(s3_factory: S3Factory, tmp_path: Path) -> None:
    store = s3_factory()
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * MiB))
    store.put_file("big-file", source)
    store.put_bytes("big-bytes", os.urandom(MIN_PART_SIZE + 1))
    store.put_bytes("small", b"x" * 1000)

    def etag(key: str) -> str:
        response = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
        return str(response["ETag"]).strip('"')

    assert etag("big-file").endswith("-3")  # 5 + 5 + 1 MiB parts
    assert etag("big-bytes").endswith("-2")
    assert "-" not in etag("small")
    store.get_file("big-file", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == source.read_bytes()


def test_s3_part_size_below_the_s3_minimum_is_refused(s3_endpoint: str) -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3Store("bucket-x", "p", endpoint_url=s3_endpoint, part_size=MiB)
    with pytest.raises(ValueError, match="bucket"):
        S3Store("Not_A_Bucket", "p", endpoint_url=s3_endpoint)
    with pytest.raises(InvalidKey):
        S3Store("bucket-x", "a/../b", endpoint_url=s3_endpoint)


def test_s3_prefixes_isolate_stores_in_one_bucket(s3_factory: S3Factory) -> None:
    first = s3_factory(prefix="team/a")
    second = s3_factory(prefix="team/ab")
    first.put_bytes("k", b"first")
    second.put_bytes("k", b"second")
    assert first.list() == ["k"]
    assert second.list() == ["k"]
    assert first.get_bytes("k") == b"first"
    assert first.delete_prefix("k") == 0
    root = s3_factory(prefix="")
    assert root.url == f"s3://{root.bucket}"
    assert root.list("team/") == ["team/a/k", "team/ab/k"]


def test_s3_listing_skips_foreign_names(s3_factory: S3Factory) -> None:
    store = s3_factory()
    store.put_bytes("real/object", b"x")
    for foreign in ["folder-marker/", "weird//name", "bad/../name"]:
        store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{foreign}", Body=b"")
    assert store.list() == ["real/object"]


def test_s3_lists_and_deletes_in_pages(s3_factory: S3Factory, s3_endpoint: str) -> None:
    keys = [f"models/m1/snapshots/epoch-{i:04d}/model.safetensors" for i in range(23)]
    direct = s3_factory()
    for key in keys:
        direct.put_bytes(key, b"w")
    direct.put_bytes("models/m2/spec.json", b"keep")
    with FaultProxy(s3_endpoint) as watcher:
        store = s3_factory(endpoint_url=watcher.url)
        store.delete_batch = 7
        store.list_page_size = 5
        assert store.list() == [*keys, "models/m2/spec.json"]
        assert store.delete_prefix("models/m1") == 23
        requests = [f"{request.method} {request.path}" for request in watcher.seen]
    assert direct.list() == ["models/m2/spec.json"]
    list_pages = [r for r in requests if r.startswith("GET") and "list-type=2" in r]
    delete_batches = [r for r in requests if r.startswith("POST") and "delete" in r]
    assert len(list_pages) == 5 + 5  # 24 keys, then the 23 doomed ones, 5 per page
    assert len(delete_batches) == 4  # 7 + 7 + 7 + 2


def test_s3_create_bucket_if_missing(s3_factory: S3Factory) -> None:
    fresh = s3_factory(bucket=f"kdigits-new-{uuid.uuid4().hex[:8]}")
    assert fresh.create_bucket_if_missing() is True
    assert fresh.create_bucket_if_missing() is False
    fresh.put_bytes("k", b"v")
    assert fresh.get_bytes("k") == b"v"


def test_s3_missing_bucket_is_a_clear_error(s3_factory: S3Factory) -> None:
    store = s3_factory(bucket=f"kdigits-absent-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ObjectStoreError, match="NoSuchBucket") as caught:
        store.put_bytes("k", b"v")
    assert store.url in str(caught.value)


def test_open_store_s3_url_finds_the_endpoint(
    s3_factory: S3Factory, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = s3_factory(prefix="shared/root")
    writer.put_bytes("datasets/d1/spec.json", b"{}")
    url = f"s3://{writer.bucket}/shared/root"
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("KDIGITS_S3_ENDPOINT", s3_endpoint)
    store = open_store(url)
    assert isinstance(store, S3Store)
    assert store.endpoint_url == s3_endpoint
    assert store.list() == ["datasets/d1/spec.json"]
    monkeypatch.delenv("KDIGITS_S3_ENDPOINT")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    fallback = open_store(url + "/")
    assert isinstance(fallback, S3Store)
    assert fallback.get_bytes("datasets/d1/spec.json") == b"{}"
    assert S3Store(writer.bucket, endpoint_url="http://127.0.0.1:9").endpoint_url == (
        "http://127.0.0.1:9"
    )
    with pytest.raises(ValueError):
        open_store("s3:///no-bucket")


# ---------------------------------------------------------------- S3 through a faulty network


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3_endpoint) as running:
        yield running


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
def test_s3_retries_throttling(s3_factory: S3Factory, proxy: FaultProxy, mode: str) -> None:
    store = s3_factory(endpoint_url=proxy.url, retry_mode=mode)
    proxy.fail_next(SLOW_DOWN)
    store.put_bytes("k", b"survived")
    assert proxy.faults_served() == 1
    assert [request.method for request in proxy.seen] == ["PUT", "PUT"]
    assert s3_factory().get_bytes("k") == b"survived"


def test_s3_retries_server_errors_and_dropped_connections(
    s3_factory: S3Factory, proxy: FaultProxy, tmp_path: Path
) -> None:
    store = s3_factory(endpoint_url=proxy.url)
    store.put_bytes("a/one", b"1")
    proxy.fail_next(INTERNAL_ERROR)
    assert store.get_bytes("a/one") == b"1"
    proxy.fail_next(RESET)
    assert store.list("a/") == ["a/one"]
    proxy.fail_next(RESET)
    assert store.exists("a/one")
    proxy.fail_next(INTERNAL_ERROR)
    store.delete("a/one")
    assert proxy.faults_served() == 4
    assert not s3_factory().exists("a/one")


def test_s3_multipart_upload_survives_failed_parts(
    s3_factory: S3Factory, proxy: FaultProxy, tmp_path: Path
) -> None:
    store = s3_factory(endpoint_url=proxy.url)
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(11 * MiB))
    part_upload = frozenset({"PUT"})
    proxy.fail_next(
        Fault("status", 503, "SlowDown", methods=part_upload),
        Fault("reset", methods=part_upload),
    )
    store.put_file("big", source)
    assert proxy.faults_served() == 2
    assert any("uploadId" in request.path for request in proxy.seen if request.fault)
    assert s3_factory().get_bytes("big") == source.read_bytes()


def test_s3_gives_up_with_a_clear_error(s3_factory: S3Factory, proxy: FaultProxy) -> None:
    store = s3_factory(endpoint_url=proxy.url, max_attempts=3)
    proxy.fail_always(SLOW_DOWN)
    started = time.monotonic()
    with pytest.raises(ObjectStoreError, match="SlowDown") as caught:
        store.put_bytes("k", b"never")
    assert time.monotonic() - started < 20
    assert f"put {store.url}/k failed" in str(caught.value)
    assert len(proxy.seen) == 3
    proxy.fail_always(INTERNAL_ERROR)
    with pytest.raises(ObjectStoreError, match="InternalError"):
        s3_factory(endpoint_url=proxy.url, max_attempts=2).get_bytes("k")
    assert len(proxy.seen) == 5


def test_s3_silent_endpoint_times_out(s3_factory: S3Factory, proxy: FaultProxy) -> None:
    store = s3_factory(endpoint_url=proxy.url, max_attempts=2, read_timeout=0.5)
    proxy.fail_always(HANG)
    started = time.monotonic()
    with pytest.raises(ObjectStoreError, match="timeout|timed out"):
        store.exists("k")
    assert time.monotonic() - started < 15
    assert len(proxy.seen) == 2


def test_s3_broken_download_resumes_the_same_version(
    s3_factory: S3Factory, proxy: FaultProxy
) -> None:
    data = os.urandom(3 * MiB)
    s3_factory().put_bytes("blob", data)
    store = s3_factory(endpoint_url=proxy.url)
    proxy.fail_next(TRUNCATE_GET)
    assert store.get_bytes("blob") == data
    gets = [request for request in proxy.seen if request.method == "GET"]
    assert [request.fault for request in gets] == ["truncate", None]
    assert gets[1].headers["range"].startswith("bytes=")
    assert gets[1].headers["if-match"].strip('"')


def test_s3_download_fails_rather_than_splice_two_versions(
    s3_factory: S3Factory, proxy: FaultProxy
) -> None:
    direct = s3_factory()
    direct.put_bytes("blob", b"a" * (2 * MiB))
    store = s3_factory(endpoint_url=proxy.url)
    proxy.fail_next(
        Fault(
            "truncate",
            methods=frozenset({"GET"}),
            after=lambda: direct.put_bytes("blob", b"b" * (2 * MiB)),
        )
    )
    with pytest.raises(ObjectStoreError, match="changed"):
        store.get_bytes("blob")
    assert store.get_bytes("blob") == b"b" * (2 * MiB)
