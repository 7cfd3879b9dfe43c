"""The dataset build: DIGITS' split rules as pure functions, then real builds as Ray jobs.

The Ray tests submit `python -m jobs.build_dataset` through the Jobs API of the session's
real local Ray head, exactly as the controller does, against real image files (MNIST digits
and hostile files), a local-directory store, and moto's S3 over HTTP for an S3 source.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image
from ray.job_submission import JobStatus

from controller.ray_local import LocalRayHead
from jobs.build_dataset import (
    MAX_CHUNK,
    MAX_CHUNK_BYTES,
    MIN_CHUNK,
    BuildError,
    derive_seed,
    main,
    parse_args,
    plan_chunks,
    plan_dataset,
    shared_prefix,
    three_way_split,
)
from jobs.events import parse_jsonl, parse_lines
from jobs.shards import read_metadata, read_shard
from jobs.sources import Entry, Listing
from jobs.specs import SplitSpec
from jobs.storage import LocalStore, ObjectStore, open_store
from tests.jobs.dataset_helpers import (
    put_spec,
    run_build,
    submit_build,
    wait_job,
    write_digit_classes,
    write_hostile_files,
    write_png,
)

Digits = tuple[np.ndarray, np.ndarray]

# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    ("size", "val", "test", "expected"),
    [
        (100, 25, 0, (75, 100)),
        (12, 25, 10, (8, 11)),  # 65% of 12 = 7.8 -> 8 train, 3 val, 1 test
        (16, 25, 10, (10, 14)),  # 10.4 -> 10 train, 4 val, 2 test
        (2, 25, 0, (1, 2)),  # 75% of 2 rounds to 2, but val must get one
        (1, 25, 0, (1, 1)),  # a single image stays in train
        (3, 25, 25, (1, 2)),  # one each
        (10, 0, 0, (10, 10)),
        (7, 0, 30, (5, 5)),  # 70% of 7 = 4.9 -> 5 train, no val, 2 test
    ],
)
def test_three_way_split_matches_digits(
    size: int, val: float, test: float, expected: tuple[int, int]
) -> None:
    assert three_way_split(size, val, test) == expected


def listing_of(counts: dict[str, int], **extra: list[Entry]) -> Listing:
    labels = sorted(counts)
    train = [
        Entry(f"/d/{name}/{i}.png", labels.index(name))
        for name in labels
        for i in range(counts[name])
    ]
    return Listing(labels=labels, splits={"train": train, **extra})


def test_plan_drops_small_classes_caps_big_ones_and_renumbers() -> None:
    listing = listing_of({"a": 1, "b": 5, "c": 20})
    plan = plan_dataset(listing, SplitSpec(val_percent=20, max_per_class=10), seed=3)
    assert plan.labels == ["b", "c"]
    assert plan.dropped == [
        {"label": "a", "count": 1, "reason": "fewer than minPerClass (2) images"}
    ]
    per_split = {
        split: sorted((e.label, e.location.split("/")[2]) for e in entries)
        for split, entries in plan.splits.items()
    }
    assert [label for label, _ in per_split["train"]] == [0] * 4 + [1] * 8
    assert [label for label, _ in per_split["val"]] == [0] * 1 + [1] * 2
    assert per_split["test"] == []
    assert all(name == ("b" if label == 0 else "c") for label, name in per_split["train"])
    used = [e.location for entries in plan.splits.values() for e in entries]
    assert len(used) == len(set(used)) == 15


def test_plan_is_deterministic_per_seed_and_shuffles_across_classes() -> None:
    listing = listing_of({"a": 30, "b": 30})
    first = plan_dataset(listing, SplitSpec(), seed=1)
    assert first == plan_dataset(listing, SplitSpec(), seed=1)
    other = plan_dataset(listing, SplitSpec(), seed=2)
    assert [e.location for e in first.splits["train"]] != [
        e.location for e in other.splits["train"]
    ]
    labels = [e.label for e in first.splits["train"]]
    assert labels != sorted(labels)  # classes are mixed, so every shard holds many classes
    ordered = plan_dataset(listing, SplitSpec(shuffle=False), seed=1)
    assert [e.location for e in ordered.splits["train"]] == [
        f"/d/{name}/{i}.png" for name in ("a", "b") for i in range(23)
    ]


def test_separate_val_and_test_lists_are_not_taken_from_train() -> None:
    val = [Entry("/v/a.png", 0), Entry("/v/b.png", 1), Entry("/v/gone.png", 2)]
    listing = listing_of({"a": 4, "b": 4, "c": 1}, val=val)
    listing.ignored_classes = {"val": {"zebra": 2}}
    plan = plan_dataset(listing, SplitSpec(val_percent=50, test_percent=25), seed=0)
    assert plan.labels == ["a", "b"]
    assert plan.dropped == [
        {"label": "c", "count": 1, "reason": "fewer than minPerClass (2) images"},
        {"label": "zebra", "count": 2, "reason": "val: class not in the training set"},
    ]
    assert sorted(plan.splits["val"]) == [("/v/a.png", 0), ("/v/b.png", 1)]  # c was dropped
    assert len(plan.splits["train"]) == 6 and len(plan.splits["test"]) == 2  # 25% test only


def test_plan_with_no_class_left_is_a_build_error() -> None:
    with pytest.raises(BuildError, match=r"split\.minPerClass: no class has at least 5"):
        plan_dataset(listing_of({"a": 2, "b": 4}), SplitSpec(min_per_class=5), seed=0)


def test_plan_chunks_cover_every_image_once() -> None:
    sizes = {"train": 7500, "val": 2500, "test": 0}
    guided = plan_chunks(sizes, cpus=2, image_bytes=28 * 28)
    lengths = [end - begin for _, begin, end in guided]
    assert all(MIN_CHUNK <= n <= MAX_CHUNK for n in lengths)
    assert lengths[0] > lengths[-1]  # big first, small last: workers finish together
    for split, count in sizes.items():
        ranges = [(b, e) for s, b, e in guided if s == split]
        covered = [i for b, e in ranges for i in range(b, e)]
        assert covered == list(range(count))
    fixed = plan_chunks(sizes, cpus=2, image_bytes=28 * 28, fixed=1000)
    assert [e - b for _, b, e in fixed] == [1000] * 7 + [500] + [1000] * 2 + [500]
    big = plan_chunks({"train": 5000}, cpus=1, image_bytes=256 * 256 * 3)
    assert max(e - b for _, b, e in big) == MAX_CHUNK_BYTES // (256 * 256 * 3)


def test_chunk_locations_are_sent_relative_to_their_shared_folder() -> None:
    assert shared_prefix(["/data/train/3/a.png", "/data/train/3/b.png"]) == "/data/train/3/"
    assert shared_prefix(["/data/train/3/a.png", "/data/train/4/a.png"]) == "/data/train/"
    assert shared_prefix(["/data/ab.png", "/data/ac.png"]) == "/data/"  # whole folders only
    assert shared_prefix(["mnist/train/0/x.png", "mnist/val/0/y.png"]) == "mnist/"
    assert shared_prefix(["a.png"]) == "" and shared_prefix([]) == ""


def test_derived_seed_is_stable_per_id() -> None:
    assert derive_seed("uid-1") == derive_seed("uid-1")
    assert derive_seed("uid-1") != derive_seed("uid-2")
    assert 0 <= derive_seed("x") < 2**31


def test_arguments_have_defaults_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDIGITS_STORE_URL", "file:///tmp/somewhere")
    monkeypatch.setenv("KDIGITS_DATASET_ID", "ds-1")
    args = parse_args([])
    assert (args.store, args.dataset_id, args.data_roots) == ("file:///tmp/somewhere", "ds-1", None)
    assert (args.parallelism, args.chunk_size) == (0, 0)
    monkeypatch.delenv("KDIGITS_DATASET_ID")
    with pytest.raises(SystemExit):
        parse_args([])
    with pytest.raises(SystemExit):
        parse_args(["--dataset-id", "x", "--parallelism", "-1"])
    assert main(["--dataset-id", "../escape", "--data-roots", "/tmp"]) == 2


# --------------------------------------------------------------------------- failing fast


def build_in_process(store: LocalStore, dataset_id: str, roots: list[Path]) -> int:
    joined = ":".join(str(root) for root in roots)
    return main(["--store", store.url, "--dataset-id", dataset_id, "--data-roots", joined])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"source": {"folder": {"train": "{data}/missing"}}},
            "source.folder.train: folder {data}/missing does not exist",
        ),
        (
            {"source": {"folder": {"train": "{data}/train"}}, "split": {"minPerClass": 3}},
            "split.minPerClass: no class has at least 3 images (classes found: 2), "
            "so no classes are left",
        ),
        (
            {"source": {"folder": {"train": "/etc"}}},
            "source.folder.train: /etc is outside the data roots ({data})",
        ),
        (None, "datasets/bad/spec.json not found in {store}"),
    ],
)
def test_bad_source_fails_before_touching_ray(
    tmp_path: Path,
    mnist_arrays: Digits,
    capsys: pytest.CaptureFixture[str],
    spec: dict[str, object] | None,
    message: str,
) -> None:
    import ray

    data = (tmp_path / "data").resolve()
    write_digit_classes(data / "train", *mnist_arrays, {0: 2, 1: 1})
    store = LocalStore(tmp_path / "store")
    if spec is not None:
        text = json.dumps(spec).replace("{data}", str(data))
        store.put_bytes("datasets/bad/spec.json", text.encode())
    expected = message.format(data=data, store=store.url)
    assert build_in_process(store, "bad", [data]) == 2
    assert not ray.is_initialized()
    out, err = capsys.readouterr()
    assert f"error: {expected}" in err
    events = list(parse_lines(out.splitlines()))
    assert events[-1]["kind"] == "done" and events[-1]["phase"] == "Failed"
    assert events[-1]["message"] == expected
    assert parse_jsonl(store.get_bytes("datasets/bad/events.jsonl"))[-1] == events[-1]
    assert not store.exists("datasets/bad/stats.json")


def test_complete_dataset_is_left_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    store = LocalStore(tmp_path / "store")
    store.put_bytes("datasets/done/stats.json", b'{"complete": true}')
    store.put_bytes("datasets/done/train/shard-00000.safetensors", b"kept")
    assert build_in_process(store, "done", [tmp_path]) == 0
    assert not ray.is_initialized()
    assert store.get_bytes("datasets/done/train/shard-00000.safetensors") == b"kept"
    events = list(parse_lines(capsys.readouterr().out.splitlines()))
    assert [(e["kind"], e["phase"]) for e in events] == [("done", "Succeeded")]


# --------------------------------------------------------------------------- real Ray jobs


def shard_contents(store: ObjectStore, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
    shards = [read_shard(store.get_bytes(key)) for key in keys]
    if not shards:
        return np.zeros((0,), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate([s.images for s in shards]), np.concatenate([s.labels for s in shards])


def resized(pixels: np.ndarray, width: int, height: int, mode: str = "L") -> np.ndarray:
    """The expected stored image, computed with plain PIL (bilinear, as DIGITS' squash)."""
    image = Image.fromarray(pixels).convert(mode).resize((width, height), Image.Resampling.BILINEAR)
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def labelled(images: np.ndarray, labels: np.ndarray) -> set[tuple[int, bytes]]:
    """(label, pixel bytes) pairs, to compare stored images with expected ones as sets."""
    return {(int(label), image.tobytes()) for image, label in zip(images, labels, strict=True)}


@pytest.mark.ray
def test_folder_build_with_hostile_files(
    ray_head: LocalRayHead, tmp_path: Path, mnist_arrays: Digits
) -> None:
    images, labels = mnist_arrays
    data = (tmp_path / "data").resolve()
    outside = (tmp_path / "outside").resolve()
    train = data / "train"
    written = write_digit_classes(train, images, labels, {0: 12, 1: 12, 2: 12, 7: 1})
    hostile = write_hostile_files(train / "0", images[0])
    (train / "1" / "readme.txt").write_text("ignored: not an image extension")
    write_png(outside / "secret.png", images[-1])
    (train / "1" / "escape.png").symlink_to(outside / "secret.png")
    store = LocalStore(tmp_path / "store")
    dataset_id = "folder-ds"
    put_spec(
        store,
        dataset_id,
        {
            "source": {"folder": {"train": str(train)}},
            "image": {"channels": 1, "width": 32, "height": 32, "resizeMode": "squash"},
            "split": {"valPercent": 25, "testPercent": 10},
            "encoding": "png",
        },
    )
    leftover = f"datasets/{dataset_id}/train/shard-00099.safetensors"
    store.put_bytes(leftover, b"left by an earlier attempt")

    status, logs, events = run_build(ray_head.dashboard_url, store.url, dataset_id, [data])
    assert status == JobStatus.SUCCEEDED, logs
    prefix = f"datasets/{dataset_id}/"
    stats = json.loads(store.get_bytes(prefix + "stats.json"))

    assert stats["complete"] is True
    assert stats["labels"] == ["0", "1", "2"] and stats["classes"] == 3
    assert store.get_bytes(prefix + "labels.txt") == b"0\n1\n2\n"
    assert stats["droppedClasses"] == [
        {"label": "7", "count": 1, "reason": "fewer than minPerClass (2) images"}
    ]
    # Classes 1 and 2 list 12 images each: 8 train, 3 val, 1 test (DIGITS' rounding).
    # Class 0 lists 16 files (12 digits and 4 hostile): 10/4/2 slots, 12 images written.
    for digit in ("1", "2"):
        assert [stats["perClass"][s][digit] for s in ("train", "val", "test")] == [8, 3, 1]
    class0 = [stats["perClass"][s]["0"] for s in ("train", "val", "test")]
    assert sum(class0) == 12 and class0[0] <= 10 and class0[1] <= 4 and class0[2] <= 2
    assert sum(stats["images"].values()) == 36
    assert stats["images"]["train"] == 16 + class0[0]

    expected_reasons = {reason: 1 for reason in hostile.values()}
    expected_reasons["outside the data roots"] = 1
    assert stats["skipped"]["count"] == 5
    assert stats["skipped"]["byReason"] == expected_reasons
    skipped_files = {Path(f["path"]).name: f["reason"] for f in stats["skipped"]["files"]}
    assert skipped_files == {**hostile, "escape.png": "outside the data roots"}

    assert stats["image"] == {"channels": 1, "width": 32, "height": 32, "resizeMode": "squash"}
    assert stats["encoding"] == "png" and stats["seed"] == derive_seed(dataset_id)
    timing = stats["timing"]
    assert timing["processSeconds"] > 0 and timing["totalSeconds"] >= timing["processSeconds"]
    assert timing["imagesPerSecond"] == pytest.approx(36 / timing["processSeconds"], rel=0.01)

    # Shards hold exactly the resized digits, under the right labels, in the split counts.
    keys = sorted(store.list(prefix))
    shard_keys = [k for split in ("train", "val", "test") for k in stats["shards"][split]]
    assert leftover not in keys
    assert keys == sorted(
        [prefix + name for name in ("spec.json", "labels.txt", "stats.json", "mean.npy")]
        + [prefix + "mean.png", prefix + "events.jsonl"]
        + shard_keys
    )
    expected = {
        (digit, resized(pixels, 32, 32).tobytes())
        for digit in (0, 1, 2)
        for pixels in written[digit]
    }
    stored: set[tuple[int, bytes]] = set()
    for split in ("train", "val", "test"):
        split_images, split_labels = shard_contents(store, stats["shards"][split])
        assert len(split_images) == stats["images"][split]
        for key in stats["shards"][split]:
            assert read_metadata(store.get_bytes(key))["encoding"] == "png"
        counts = np.bincount(split_labels, minlength=3).tolist()
        assert counts == [stats["perClass"][split][d] for d in ("0", "1", "2")]
        stored |= labelled(split_images, split_labels)
    assert stored == expected

    train_images, _ = shard_contents(store, stats["shards"]["train"])
    mean = np.load(io.BytesIO(store.get_bytes(prefix + "mean.npy")), allow_pickle=False)
    assert mean.dtype == np.float32 and mean.shape == (32, 32, 1)
    np.testing.assert_allclose(mean, train_images.astype(np.float64).mean(axis=0), atol=1e-4)
    mean_png = np.asarray(Image.open(io.BytesIO(store.get_bytes(prefix + "mean.png"))))
    np.testing.assert_array_equal(mean_png, np.rint(mean[:, :, 0]).astype(np.uint8))

    kinds = [e["kind"] for e in events]
    assert kinds[0] == "progress" and kinds[-2:] == ["stats", "done"]
    assert events[-1]["phase"] == "Succeeded"
    assert events[-2]["images"] == stats["images"] and events[-2]["skipped"] == 5
    assert any(e["kind"] == "progress" and e["progress"] == 1.0 for e in events)
    stored_events = parse_jsonl(store.get_bytes(prefix + "events.jsonl"))
    assert [e["kind"] for e in stored_events] == kinds

    # A second run finds the complete dataset and does nothing.
    before = store.get_bytes(prefix + "stats.json")
    status, logs, events = run_build(ray_head.dashboard_url, store.url, dataset_id, [data])
    assert status == JobStatus.SUCCEEDED, logs
    assert events[-1]["phase"] == "Succeeded" and events[-1]["message"] == "already built"
    assert store.get_bytes(prefix + "stats.json") == before
    assert sorted(store.list(prefix)) == keys


@pytest.mark.ray
def test_textfile_build_with_separate_val_list(
    ray_head: LocalRayHead, tmp_path: Path, mnist_arrays: Digits
) -> None:
    images, labels = mnist_arrays
    data = (tmp_path / "data").resolve()
    lines: dict[str, list[str]] = {"train": [], "val": []}
    expected: set[tuple[int, bytes]] = set()
    for label, digit in enumerate((3, 5, 8)):
        for i, pixels in enumerate(images[labels == digit][:10]):
            write_png(data / "imgs" / f"d{digit} {i}.png", pixels)
            lines["train" if i < 8 else "val"].append(f"d{digit} {i}.png {label}")
            expected.add((label, resized(pixels, 20, 20, "RGB").tobytes()))
    lines["train"].append("missing.png 0")
    (data / "labels.txt").write_text("three\nfive\neight\n")
    for split, entries in lines.items():
        (data / f"{split}.txt").write_text("\n".join(entries) + "\n")
    store = LocalStore(tmp_path / "store")
    put_spec(
        store,
        "text-ds",
        {
            "source": {
                "textfile": {
                    "train": str(data / "train.txt"),
                    "val": str(data / "val.txt"),
                    "labels": str(data / "labels.txt"),
                    "root": str(data / "imgs"),
                }
            },
            "image": {"channels": 3, "width": 20, "height": 20, "resizeMode": "crop"},
            "split": {"valPercent": 40, "seed": 11},
            "encoding": "none",
        },
    )
    status, logs, _ = run_build(
        ray_head.dashboard_url, store.url, "text-ds", [data], "--chunk-size", "7"
    )
    assert status == JobStatus.SUCCEEDED, logs
    stats = json.loads(store.get_bytes("datasets/text-ds/stats.json"))
    assert stats["labels"] == ["three", "five", "eight"] and stats["seed"] == 11
    assert stats["images"] == {"train": 24, "val": 6, "test": 0}  # valPercent ignored
    assert stats["skipped"]["byReason"] == {"file not found": 1}
    assert len(stats["shards"]["train"]) == 4  # 25 entries in chunks of 7
    stored: set[tuple[int, bytes]] = set()
    for split in ("train", "val"):
        split_images, split_labels = shard_contents(store, stats["shards"][split])
        assert split_images.shape[1:] == (20, 20, 3)
        stored |= labelled(split_images, split_labels)
    assert stored == expected


@pytest.mark.ray
def test_s3_source_into_an_s3_store(
    ray_head: LocalRayHead,
    tmp_path: Path,
    s3_endpoint: str,
    mnist_arrays: Digits,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Images read from one bucket, shards written by the workers into another, over HTTP."""
    images, labels = mnist_arrays
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="digits-src")
    client.create_bucket(Bucket="kd-store")
    for digit in (0, 1, 2):
        picked = images[labels == digit]
        for i in range(8):
            split = "train" if i < 6 else "test"
            buffer = io.BytesIO()
            Image.fromarray(picked[i]).save(buffer, format="PNG")
            key = f"mnist/{split}/{digit}/{i}.png"
            client.put_object(Bucket="digits-src", Key=key, Body=buffer.getvalue())
    client.put_object(Bucket="digits-src", Key="mnist/train/0/bad.png", Body=b"not a png")
    monkeypatch.setenv("KDIGITS_S3_ENDPOINT", s3_endpoint)
    store = open_store("s3://kd-store/kdigits")
    put_spec(
        store,
        "s3-ds",
        {
            "source": {"s3": {"endpoint": s3_endpoint, "bucket": "digits-src", "prefix": "mnist"}},
            "image": {"channels": 1, "width": 28, "height": 28},
            "encoding": "png",
        },
    )
    env = {
        name: os.environ[name]
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    env["KDIGITS_S3_ENDPOINT"] = s3_endpoint
    status, logs, _ = run_build(
        ray_head.dashboard_url, "s3://kd-store/kdigits", "s3-ds", [tmp_path], env=env
    )
    assert status == JobStatus.SUCCEEDED, logs
    stats = json.loads(store.get_bytes("datasets/s3-ds/stats.json"))
    assert stats["labels"] == ["0", "1", "2"]
    assert stats["images"]["test"] == 6
    assert stats["perClass"]["test"] == {"0": 2, "1": 2, "2": 2}
    assert stats["images"]["train"] + stats["images"]["val"] == 18
    assert stats["skipped"] == {
        "count": 1,
        "byReason": {"not an image": 1},
        "files": [{"path": "mnist/train/0/bad.png", "reason": "not an image"}],
    }
    stored_keys = client.list_objects_v2(Bucket="kd-store", Prefix="kdigits/datasets/s3-ds/")
    names = {item["Key"] for item in stored_keys["Contents"]}
    for split in ("train", "val", "test"):
        assert {"kdigits/" + key for key in stats["shards"][split]} <= names
    test_images, test_labels = shard_contents(store, stats["shards"]["test"])
    originals = {(d, images[labels == d][i].tobytes()) for d in (0, 1, 2) for i in (6, 7)}
    assert labelled(test_images[:, :, :, 0], test_labels) == originals


@pytest.mark.ray
def test_killed_build_leaves_no_stats_and_a_retry_completes(
    ray_head: LocalRayHead, tmp_path: Path, mnist_arrays: Digits
) -> None:
    images, labels = mnist_arrays
    data = (tmp_path / "data").resolve()
    write_digit_classes(data / "train", images, labels, {d: 30 for d in range(10)})
    store = LocalStore(tmp_path / "store")
    put_spec(
        store,
        "killed-ds",
        {
            "source": {"folder": {"train": str(data / "train")}},
            "image": {"channels": 3, "width": 256, "height": 256, "resizeMode": "fill"},
            "encoding": "png",
        },
    )
    prefix = "datasets/killed-ds/"
    client, job = submit_build(
        ray_head.dashboard_url,
        store.url,
        "killed-ds",
        [data],
        "--parallelism",
        "1",
        "--chunk-size",
        "10",
    )
    deadline = time.monotonic() + 120
    while not any("/shard-" in key for key in store.list(prefix)):
        assert time.monotonic() < deadline, client.get_job_logs(job)
        assert not client.get_job_status(job).is_terminal(), client.get_job_logs(job)
        time.sleep(0.05)
    client.stop_job(job)
    assert wait_job(client, job) == JobStatus.STOPPED
    time.sleep(2)  # anything still running would have written by now
    keys = store.list(prefix)
    shards = [k for k in keys if "/shard-" in k]
    assert prefix + "stats.json" not in keys
    assert 0 < len(shards) < 30  # it really was stopped part-way

    status, logs, events = run_build(ray_head.dashboard_url, store.url, "killed-ds", [data])
    assert status == JobStatus.SUCCEEDED, logs
    stats = json.loads(store.get_bytes(prefix + "stats.json"))
    assert sum(stats["images"].values()) == 300
    listed = [k for split in ("train", "val", "test") for k in stats["shards"][split]]
    assert sorted(k for k in store.list(prefix) if "/shard-" in k) == sorted(listed)
    assert events[-1]["phase"] == "Succeeded"


@pytest.mark.ray
def test_source_outside_the_data_roots_fails_clearly(
    ray_head: LocalRayHead, tmp_path: Path, mnist_arrays: Digits
) -> None:
    images, labels = mnist_arrays
    allowed = (tmp_path / "allowed").resolve()
    allowed.mkdir()
    elsewhere = (tmp_path / "elsewhere").resolve()
    write_digit_classes(elsewhere, images, labels, {0: 3, 1: 3})
    store = LocalStore(tmp_path / "store")
    put_spec(store, "bad-ds", {"source": {"folder": {"train": str(elsewhere)}}})
    status, logs, events = run_build(ray_head.dashboard_url, store.url, "bad-ds", [allowed])
    assert status == JobStatus.FAILED
    message = f"source.folder.train: {elsewhere} is outside the data roots ({allowed})"
    assert f"error: {message}" in logs
    assert events[-1]["kind"] == "done" and events[-1]["phase"] == "Failed"
    assert events[-1]["message"] == message
    keys = store.list("datasets/bad-ds/")
    assert "datasets/bad-ds/stats.json" not in keys
    stored = parse_jsonl(store.get_bytes("datasets/bad-ds/events.jsonl"))
    assert stored[-1]["message"] == message
