"""Object-store layout and the shard format."""

from __future__ import annotations

import numpy as np
import pytest

from jobs.layout import epoch_label, parse_epoch_label, shard_key, snapshot_prefix
from jobs.shards import read_metadata, read_shard, write_shard


@pytest.mark.parametrize("epoch", [1, 3, 30, 2.5, 0.25, 12.125])
def test_epoch_labels_round_trip_and_sort(epoch: float) -> None:
    assert parse_epoch_label(epoch_label(epoch)) == pytest.approx(epoch)


def test_keys() -> None:
    assert shard_key("abc", "val", 3) == "datasets/abc/val/shard-00003.safetensors"
    assert snapshot_prefix("m1", 3) == "models/m1/snapshots/epoch-0003/"
    with pytest.raises(ValueError, match="invalid object id"):
        snapshot_prefix("../x", 1)
    with pytest.raises(ValueError, match="unknown split"):
        shard_key("abc", "holdout", 0)


@pytest.mark.parametrize("encoding", ["none", "png", "jpg"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shards_round_trip(
    encoding: str, channels: int, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> None:
    digits, labels = mnist_arrays
    images = np.repeat(digits[:50, :, :, None], channels, axis=3)
    shard = read_shard(write_shard(images, labels[:50], encoding))
    assert shard.images.shape == images.shape
    assert (shard.labels == labels[:50]).all()
    if encoding == "jpg":
        assert np.abs(shard.images.astype(int) - images).mean() < 8
    else:
        assert (shard.images == images).all()
    assert read_metadata(write_shard(images, labels[:50], encoding))["encoding"] == encoding


def test_shard_rejects_bad_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_shard(np.zeros((2, 4, 4, 1), dtype=np.float32), np.zeros(2), "none")
    with pytest.raises(ValueError, match="length"):
        write_shard(np.zeros((2, 4, 4, 1), dtype=np.uint8), np.zeros(3), "none")
