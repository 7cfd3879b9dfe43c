"""Inference: a real LeNet trained on MNIST, loaded from the store and run on real digits."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import layout
from jobs.images import REASON_BOMB, REASON_NOT_IMAGE, REASON_TOO_LARGE, DecodeLimits, resize
from jobs.inference import (
    ImageError,
    ModelCache,
    SnapshotNotFound,
    load_model,
    resolve_snapshot,
)
from jobs.specs import ResizeMode
from jobs.storage import LocalStore
from tests.jobs.dataset_helpers import bomb_png
from tests.jobs.inference_helpers import (
    HELD_OUT,
    LABELS,
    png_bytes,
    reference_probabilities,
    trained_lenet,
    write_trained,
)


@pytest.fixture()
def store(tmp_path):
    return LocalStore(tmp_path / "store")


@pytest.fixture()
def trained(mnist_arrays):
    result = trained_lenet(mnist_arrays)
    assert result.val_accuracy > 0.9, "the test model did not learn"
    return result


def test_classify_matches_plain_torch_on_held_out_digits(store, trained, mnist_arrays) -> None:
    images, labels = mnist_arrays
    prefix = write_trained(store, trained)
    model = load_model(store, prefix, device="cpu")
    assert model.labels == LABELS
    assert model.image.resize_mode == ResizeMode.SQUASH
    assert not model.network.training

    digits = images[HELD_OUT][:300]
    answers = model.classify([png_bytes(d) for d in digits], top_k=5)
    reference = reference_probabilities(trained, digits)

    assert len(answers) == 300
    assert all(len(a) == 5 for a in answers)
    top1 = np.array([int(a[0][0]) for a in answers])
    np.testing.assert_array_equal(top1, reference.argmax(1))
    for answer, row in zip(answers, reference, strict=True):
        probabilities = [p for _, p in answer]
        assert probabilities == sorted(probabilities, reverse=True)
        np.testing.assert_allclose(probabilities[0], row.max(), rtol=1e-4, atol=1e-6)
    assert (top1 == labels[HELD_OUT][:300]).mean() > 0.9


def test_preprocess_is_the_dataset_path(store, trained, mnist_arrays) -> None:
    images, _ = mnist_arrays
    prefix = write_trained(store, trained, resize_mode=ResizeMode.CROP)
    model = load_model(store, prefix, device="cpu")
    assert model.image.resize_mode == ResizeMode.CROP  # from the dataset's spec.json

    digit = images[HELD_OUT[0]]
    np.testing.assert_array_equal(model.preprocess(png_bytes(digit)), digit[None])

    wide = np.concatenate([digit, np.zeros((28, 20), np.uint8)], axis=1)  # 28x48
    expected = resize(wide[:, :, None], 28, 28, ResizeMode.CROP, np.random.default_rng(0))
    np.testing.assert_array_equal(model.preprocess(png_bytes(wide)), expected.transpose(2, 0, 1))

    rgb = np.stack([digit] * 3, axis=-1)  # a colour image becomes grayscale, like the dataset
    np.testing.assert_array_equal(model.preprocess(png_bytes(rgb)), digit[None])


def test_mean_and_probabilities_batched(store, trained, mnist_arrays) -> None:
    images, _ = mnist_arrays
    model = load_model(store, write_trained(store, trained), device="cpu", batch_size=7)
    pixels = images[HELD_OUT][:30][:, None]
    probabilities = model.probabilities(pixels)
    assert probabilities.shape == (30, 10)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        probabilities, reference_probabilities(trained, images[HELD_OUT][:30]), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"expected uint8 \[N, 1, 28, 28\]"):
        model.probabilities(np.zeros((2, 3, 28, 28), np.uint8))


def test_visualize_layer_statistics(store, trained, mnist_arrays) -> None:
    images, _ = mnist_arrays
    model = load_model(store, write_trained(store, trained), device="cpu")
    view = model.visualize(png_bytes(images[HELD_OUT[1]]))
    expected = model.classify_one(png_bytes(images[HELD_OUT[1]]))
    assert [label for label, _ in view["predictions"]] == [label for label, _ in expected]
    assert [p for _, p in view["predictions"]] == pytest.approx([p for _, p in expected], abs=1e-5)
    assert view["totalParameters"] == sum(p.numel() for p in model.network.parameters())
    layers = {layer["name"]: layer for layer in view["layers"]}
    conv = layers["features.0"]
    assert conv["type"] == "Conv2d"
    assert conv["weights"]["shape"] == [20, 1, 5, 5]
    assert conv["weights"]["parameters"] == 20 * 25 + 20
    weight = dict(model.network.named_parameters())["features.0.weight"].detach().numpy()
    assert conv["weights"]["mean"] == pytest.approx(float(weight.mean()), rel=1e-5)
    assert conv["weights"]["std"] == pytest.approx(float(weight.std()), rel=1e-5)
    assert sum(conv["weights"]["histogram"]["counts"]) == weight.size
    assert len(conv["weights"]["histogram"]["centers"]) == 20
    assert conv["activations"]["shape"] == [1, 20, 24, 24]
    assert sum(conv["activations"]["histogram"]["counts"]) == 20 * 24 * 24
    assert layers["scale"]["weights"] is None
    assert layers["classifier.3"]["activations"]["shape"] == [1, 10]
    relu = layers["classifier.2"]["activations"]
    assert relu["histogram"]["ticks"][0] >= 0  # recorded after the in-place ReLU ran
    total = sum(layer["weights"]["parameters"] for layer in view["layers"] if layer["weights"])
    assert total == view["totalParameters"]
    json.dumps(view)  # plain JSON


def test_snapshot_choice_and_cache(store, trained) -> None:
    write_trained(store, trained, epochs=(1.0, 2.0, 2.5))
    assert resolve_snapshot(store, "m1") == layout.snapshot_prefix("m1", 2.5)
    assert resolve_snapshot(store, "m1", 1) == layout.snapshot_prefix("m1", 1.0)
    with pytest.raises(SnapshotNotFound, match=r"epoch 7 \(snapshots: 1, 2, 2.5\)"):
        resolve_snapshot(store, "m1", 7)
    with pytest.raises(SnapshotNotFound, match="no complete snapshot"):
        resolve_snapshot(store, "other")

    cache = ModelCache(capacity=2, device="cpu")
    first = cache.get(store, layout.snapshot_prefix("m1", 1.0))
    assert cache.get(store, layout.snapshot_prefix("m1", 1.0)) is first
    cache.get(store, layout.snapshot_prefix("m1", 2.0))
    cache.get(store, layout.snapshot_prefix("m1", 2.5))
    assert len(cache) == 2
    assert cache.get(store, layout.snapshot_prefix("m1", 1.0)) is not first  # evicted, reloaded
    cache.evict("models/m1/")
    assert len(cache) == 0


def test_hostile_images_refused(store, trained, mnist_arrays) -> None:
    images, _ = mnist_arrays
    prefix = write_trained(store, trained)
    model = load_model(store, prefix, device="cpu", limits=DecodeLimits(max_bytes=4096))
    with pytest.raises(ImageError, match="decompression bomb") as bomb:
        model.classify_one(bomb_png())
    assert bomb.value.reason == REASON_BOMB

    noise = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    with pytest.raises(ImageError, match="file too large") as large:
        model.classify_one(png_bytes(noise))
    assert large.value.reason == REASON_TOO_LARGE

    with pytest.raises(ImageError, match="not an image") as text:
        model.classify_one(b"#!/bin/sh\necho not a picture\n" * 10)
    assert text.value.reason == REASON_NOT_IMAGE

    eps = io.BytesIO()  # a format the dataset path never parses (PIL would shell out for EPS)
    Image.fromarray(images[0]).save(eps, format="TIFF")
    assert model.classify_one(eps.getvalue())  # TIFF is allowed, like DIGITS
    with pytest.raises(ImageError, match="not an image"):
        model.classify_one(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\n")


def test_missing_snapshot_files(store) -> None:
    with pytest.raises(FileNotFoundError, match="not a snapshot or pretrained model"):
        load_model(store, "models/none/snapshots/epoch-0001/")


def test_runs_under_inference_mode_without_grad(store, trained, mnist_arrays) -> None:
    images, _ = mnist_arrays
    model = load_model(store, write_trained(store, trained), device="cpu")
    model.classify([png_bytes(images[HELD_OUT[2]])])
    assert all(p.grad is None for p in model.network.parameters())
    assert torch.is_grad_enabled()
