"""Listing folder, textfile and S3 sources into labelled entries, on real files and over HTTP."""

from __future__ import annotations

from pathlib import Path

import boto3
import numpy as np
import pytest

from jobs.images import DecodeLimits, ImageRejected, decode_image
from jobs.sources import (
    S3Reader,
    SourceError,
    list_folder_source,
    list_s3_source,
    list_source,
    list_textfile_source,
    parse_list_line,
)
from jobs.specs import DatasetSource, FolderSource, S3Source, TextfileSource
from tests.jobs.dataset_helpers import png_bytes, write_png

Digits = tuple[np.ndarray, np.ndarray]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path.resolve()


def digit(mnist_arrays: Digits, label: int, index: int = 0) -> np.ndarray:
    images, labels = mnist_arrays
    return images[labels == label][index]


# --------------------------------------------------------------------------- folders


def test_folder_classes_are_sorted_subfolders_with_digits_extensions(
    root: Path, mnist_arrays: Digits
) -> None:
    train = root / "train"
    write_png(train / "dog" / "b.PNG", digit(mnist_arrays, 1))
    write_png(train / "dog" / "a.jpeg", digit(mnist_arrays, 2))
    write_png(train / "cat" / "nested" / "deep" / "c.png", digit(mnist_arrays, 3))
    (train / "cat" / "notes.txt").write_text("not an image")
    (train / "cat" / ".hidden.png").write_bytes(b"")  # a dot file ending in .png is listed
    (train / "stray.png").write_bytes(png_bytes(digit(mnist_arrays, 4)))  # not in a class
    (train / "empty-class").mkdir()
    listing = list_folder_source(FolderSource(train=str(train)), [root])
    assert listing.labels == ["cat", "dog", "empty-class"]
    located = [
        (Path(e.location).relative_to(train).as_posix(), e.label) for e in listing.splits["train"]
    ]
    assert located == [
        ("cat/.hidden.png", 0),
        ("cat/nested/deep/c.png", 0),
        ("dog/a.jpeg", 1),
        ("dog/b.PNG", 1),
    ]
    assert set(listing.splits) == {"train"}


def test_folder_symlink_out_of_the_roots_is_skipped_and_reported(
    root: Path, tmp_path: Path, mnist_arrays: Digits
) -> None:
    outside = tmp_path / "outside"
    write_png(outside / "secret.png", digit(mnist_arrays, 0))
    write_png(root / "shared" / "ok.png", digit(mnist_arrays, 1))
    train = root / "train"
    write_png(train / "a" / "1.png", digit(mnist_arrays, 2))
    (train / "a" / "escape.png").symlink_to(outside / "secret.png")
    (train / "a" / "escape-dir").symlink_to(outside)
    (train / "a" / "inside.png").symlink_to(root / "shared" / "ok.png")
    listing = list_folder_source(FolderSource(train=str(train)), [root])
    locations = sorted(e.location for e in listing.splits["train"])
    assert locations == [str(root / "shared" / "ok.png"), str(train / "a" / "1.png")]
    assert sorted(listing.skipped) == [
        (str(train / "a" / "escape-dir"), "outside the data roots"),
        (str(train / "a" / "escape.png"), "outside the data roots"),
    ]


def test_folder_errors_name_the_field(root: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"source\.folder\.train: folder .* does not exist"):
        list_source(DatasetSource(folder=FolderSource(train=str(root / "nope"))), [root])
    outside = tmp_path / "elsewhere"
    (outside / "a").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"source\.folder\.train: .* outside the data roots"):
        list_source(DatasetSource(folder=FolderSource(train=str(outside))), [root])
    (root / "flat").mkdir()
    (root / "flat" / "x.png").write_bytes(b"x")
    with pytest.raises(SourceError, match="no class sub-folders"):
        list_source(DatasetSource(folder=FolderSource(train=str(root / "flat"))), [root])


def test_separate_val_folder_keeps_train_labels(root: Path, mnist_arrays: Digits) -> None:
    for name in ("a", "b"):
        write_png(root / "train" / name / "1.png", digit(mnist_arrays, 1))
    write_png(root / "val" / "b" / "1.png", digit(mnist_arrays, 2))
    write_png(root / "val" / "zebra" / "1.png", digit(mnist_arrays, 3))
    write_png(root / "val" / "zebra" / "2.png", digit(mnist_arrays, 4))
    source = FolderSource(train=str(root / "train"), val=str(root / "val"))
    listing = list_folder_source(source, [root])
    assert listing.labels == ["a", "b"]
    assert listing.splits["val"] == [(str(root / "val" / "b" / "1.png"), 1)]
    assert listing.ignored_classes == {"val": {"zebra": 2}}


# --------------------------------------------------------------------------- text files


def test_parse_list_line() -> None:
    assert parse_list_line("images/a b.png 3") == ("images/a b.png", 3)
    assert parse_list_line("  /abs/x.jpg\t12  ") == ("/abs/x.jpg", 12)
    assert parse_list_line("no-label.png") is None
    assert parse_list_line("x.png label") is None


def test_textfile_resolves_relative_paths_against_root(root: Path, mnist_arrays: Digits) -> None:
    images = root / "images"
    write_png(images / "zero one.png", digit(mnist_arrays, 0))
    write_png(images / "one.png", digit(mnist_arrays, 1))
    write_png(images / "two.png", digit(mnist_arrays, 2))
    lists = root / "lists"
    lists.mkdir()
    (lists / "labels.txt").write_text("zero\none\ntwo\n\n")
    (lists / "train.txt").write_text(
        "zero one.png 0\n"
        f"{images / 'one.png'} 1\n"
        "\n"
        "# a comment\n"
        "two.png 7\n"
        "garbage line without a label\n"
        "../../../etc/passwd 0\n"
        "/etc/passwd 0\n"
    )
    (lists / "val.txt").write_text("two.png 2\n")
    source = TextfileSource(
        train=str(lists / "train.txt"),
        val=str(lists / "val.txt"),
        labels=str(lists / "labels.txt"),
        root=str(images),
    )
    listing = list_textfile_source(source, [root])
    assert listing.labels == ["zero", "one", "two"]
    assert listing.splits["train"] == [
        (str(images / "zero one.png"), 0),
        (str(images / "one.png"), 1),
    ]
    assert listing.splits["val"] == [(str(images / "two.png"), 2)]
    assert listing.skipped == [
        (f"{lists / 'train.txt'}:5", "label out of range"),
        (f"{lists / 'train.txt'}:6", "malformed list line"),
        ("../../../etc/passwd", "outside the data roots"),
        ("/etc/passwd", "outside the data roots"),
    ]


def test_textfile_without_root_resolves_against_the_list_folder(
    root: Path, mnist_arrays: Digits
) -> None:
    write_png(root / "sub" / "a.png", digit(mnist_arrays, 5))
    (root / "sub" / "list.txt").write_text("a.png 0\n")
    (root / "labels.txt").write_text("five\n")
    source = TextfileSource(train=str(root / "sub" / "list.txt"), labels=str(root / "labels.txt"))
    listing = list_textfile_source(source, [root])
    assert listing.splits["train"] == [(str(root / "sub" / "a.png"), 0)]


def test_textfile_errors_name_the_field(root: Path) -> None:
    (root / "labels.txt").write_text("a\n")
    missing = TextfileSource(train=str(root / "none.txt"), labels=str(root / "labels.txt"))
    with pytest.raises(SourceError, match=r"source\.textfile\.train: file .* does not exist"):
        list_source(DatasetSource(textfile=missing), [root])
    (root / "train.txt").write_text("")
    (root / "empty-labels.txt").write_text("\n\n")
    no_labels = TextfileSource(train=str(root / "train.txt"), labels=str(root / "empty-labels.txt"))
    with pytest.raises(SourceError, match=r"source\.textfile\.labels: .* lists no classes"):
        list_source(DatasetSource(textfile=no_labels), [root])
    outside = TextfileSource(train="/etc/hostname", labels=str(root / "labels.txt"))
    with pytest.raises(SourceError, match=r"source\.textfile\.train: .* outside the data roots"):
        list_source(DatasetSource(textfile=outside), [root])


# --------------------------------------------------------------------------- S3


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    name = "src-" + request.node.name.replace("_", "-")[:40].lower().strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def test_s3_prefix_lists_like_a_folder(s3_endpoint: str, bucket: str, mnist_arrays: Digits) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = {
        "ds/train/seven/a.png": digit(mnist_arrays, 7),
        "ds/train/seven/sub/b.PNG": digit(mnist_arrays, 7, 1),
        "ds/train/one/c.png": digit(mnist_arrays, 1),
        "ds/val/one/d.png": digit(mnist_arrays, 1, 1),
        "ds/val/two/e.png": digit(mnist_arrays, 2),
        "ds/test/seven/f.png": digit(mnist_arrays, 7, 2),
    }
    for key, pixels in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=png_bytes(pixels))
    client.put_object(Bucket=bucket, Key="ds/train/seven/readme.txt", Body=b"text")
    client.put_object(Bucket=bucket, Key="ds/train/loose.png", Body=b"no class folder")
    client.put_object(Bucket=bucket, Key="other/train/x/y.png", Body=b"other prefix")
    source = S3Source(endpoint=s3_endpoint, bucket=bucket, prefix="/ds/")
    listing = list_s3_source(source)
    assert listing.labels == ["one", "seven"]
    assert listing.splits == {
        "train": [
            ("ds/train/one/c.png", 0),
            ("ds/train/seven/a.png", 1),
            ("ds/train/seven/sub/b.PNG", 1),
        ],
        "val": [("ds/val/one/d.png", 0)],
        "test": [("ds/test/seven/f.png", 1)],
    }
    assert listing.ignored_classes == {"val": {"two": 1}}
    reader = S3Reader(bucket=bucket, endpoint=s3_endpoint)
    pixels = decode_image(reader.read("ds/train/seven/a.png"), 1)
    np.testing.assert_array_equal(pixels[:, :, 0], digit(mnist_arrays, 7))


def test_s3_reader_refuses_big_and_missing_objects(s3_endpoint: str, bucket: str) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=bucket, Key="big.png", Body=b"x" * 2000)
    small = S3Reader(bucket=bucket, endpoint=s3_endpoint, limits=DecodeLimits(max_bytes=1000))
    with pytest.raises(ImageRejected) as error:
        small.read("big.png")
    assert error.value.reason == "file too large"
    with pytest.raises(ImageRejected) as error:
        small.read("missing.png")
    assert error.value.reason == "file not found"


def test_s3_errors_are_source_errors(s3_endpoint: str, bucket: str) -> None:
    with pytest.raises(SourceError, match=r"no images under s3://.*/empty/train/<class>/"):
        list_s3_source(S3Source(endpoint=s3_endpoint, bucket=bucket, prefix="empty"))
    with pytest.raises(SourceError, match="cannot list"):
        list_s3_source(S3Source(endpoint=s3_endpoint, bucket="no-such-bucket-here"))
