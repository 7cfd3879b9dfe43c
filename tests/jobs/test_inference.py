"""Inference: a real LeNet trained on MNIST, loaded from the store and run on real digits.

Also the fast paths: libpng for plain PNGs (the same pixels as PIL), the channels-last
layout on CPU, and top-k for many rows at once (the same answers as row by row).
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from jobs import layout
from jobs.images import (
    DEFAULT_LIMITS,
    REASON_BOMB,
    REASON_NOT_IMAGE,
    REASON_TOO_LARGE,
    REASON_TRUNCATED,
    DecodeLimits,
    decode_image,
    resize,
)
from jobs.inference import (
    ImageError,
    LoadedModel,
    ModelCache,
    SnapshotNotFound,
    decode_plain_png,
    load_model,
    png_decoder,
    resolve_snapshot,
    top_k_many,
    top_k_predictions,
)
from jobs.specs import ImageSpec, ResizeMode
from jobs.storage import LocalStore
from tests.jobs.dataset_helpers import bomb_png
from tests.jobs.inference_helpers import (
    HELD_OUT,
    LABELS,
    network_info,
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


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _with_chunk(png: bytes, kind: bytes, body: bytes, *, bad_crc: bool = False) -> bytes:
    """`png` with one more chunk right after IHDR (which ends at byte 33)."""
    crc = zlib.crc32(kind + body) ^ (1 if bad_crc else 0)
    return png[:33] + struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc) + png[33:]


def test_plain_pngs_decode_to_the_same_pixels_as_pil(mnist_arrays) -> None:
    # the pinned torchvision has it; a build without it would silently lose the fast path
    assert png_decoder() is not None, "torchvision's PNG decoder is missing"
    images, _ = mnist_arrays
    digit = images[HELD_OUT[3]]
    rgb = np.stack([digit, digit[::-1], 255 - digit], axis=-1)
    grey = Image.fromarray(digit)
    gamma = _with_chunk(_png(grey), b"gAMA", struct.pack(">I", 100000))
    plain = {
        "grey": (_png(grey), 1),
        "grey with tRNS": (_png(grey, transparency=0), 1),
        "grey, other size": (_png(Image.fromarray(np.tile(digit, (2, 1)))), 1),
        "grey with gAMA and tEXt": (_with_chunk(gamma, b"tEXt", b"k\0v"), 1),
        "rgb": (_png(Image.fromarray(rgb)), 3),
        "rgb with tRNS": (_png(Image.fromarray(rgb), transparency=(0, 0, 0)), 3),
    }
    for name, (data, channels) in plain.items():
        fast = decode_plain_png(data, channels, DEFAULT_LIMITS)
        assert fast is not None, name
        np.testing.assert_array_equal(fast, decode_image(data, channels), err_msg=name)


def test_other_pngs_take_the_pil_path(store, trained, mnist_arrays) -> None:
    images, _ = mnist_arrays
    digit = images[HELD_OUT[3]]
    grey = _png(Image.fromarray(digit))
    rgb = _png(Image.fromarray(np.stack([digit] * 3, axis=-1)))
    declined = {
        "rgb for a grey model": (rgb, 1),
        "grey for a colour model": (grey, 3),
        "palette": (_png(Image.fromarray(digit).convert("P")), 1),
        "16-bit": (_png(Image.fromarray(digit.astype(np.uint16) * 257)), 1),
        "grey and alpha": (_png(Image.fromarray(digit).convert("LA")), 1),
        "bad ancillary crc": (_with_chunk(grey, b"tEXt", b"k\0v", bad_crc=True), 1),
        "second critical chunk": (_with_chunk(grey, b"PLTE", b"\0\0\0"), 1),
        "no IEND": (grey[:-12], 1),
        "truncated": (grey[: len(grey) // 2], 1),
        "bomb": (bomb_png(), 1),
        "too large": (grey, 1),
        "not a png": (b"#!/bin/sh\n" * 10, 1),
    }
    for name, (data, channels) in declined.items():
        limits = DecodeLimits(max_bytes=len(grey) - 1) if name == "too large" else DEFAULT_LIMITS
        assert decode_plain_png(data, channels, limits) is None, name

    # ...where they get the dataset path's answers: refusals with its reasons, or its pixels
    model = load_model(store, write_trained(store, trained), device="cpu")
    for name, reason in {
        "bad ancillary crc": REASON_NOT_IMAGE,
        "truncated": REASON_TRUNCATED,
        "bomb": REASON_BOMB,
    }.items():
        with pytest.raises(ImageError) as refused:
            model.preprocess(declined[name][0])
        assert refused.value.reason == reason, name
    for name in ("rgb for a grey model", "palette", "16-bit", "no IEND"):
        expected = decode_image(declined[name][0], 1).transpose(2, 0, 1)
        np.testing.assert_array_equal(model.preprocess(declined[name][0]), expected, err_msg=name)


def test_top_k_many_is_top_k_predictions_per_row() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.random((50, 7)).astype(np.float32)
    probabilities[:10, 2:5] = 0.25  # ties keep class order, as a stable sort does
    labels = [f"class {i}" for i in range(7)]
    for k in (1, 3, 7, 12):
        many = top_k_many(probabilities, labels, k)
        assert many == [top_k_predictions(row, labels, k) for row in probabilities]
        expected = []
        for row in probabilities:
            order = np.argsort(-row, kind="stable")[: min(k, 7)]
            expected.append([[labels[int(i)], float(row[int(i)])] for i in order])
        assert many == expected
        assert all(type(pair) is list and type(pair[1]) is float for row in many for pair in row)
    assert top_k_many(np.zeros((0, 7), np.float32), labels, 5) == []


def test_cpu_networks_run_channels_last_unless_they_cannot(store, trained, mnist_arrays) -> None:
    images, _ = mnist_arrays
    model = load_model(store, write_trained(store, trained), device="cpu")
    assert model.channels_last
    conv = dict(model.network.named_parameters())["features.2.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    pixels = images[HELD_OUT][:40][:, None]
    np.testing.assert_allclose(
        model.probabilities(pixels), reference_probabilities(trained, pixels[:, 0]), atol=1e-5
    )

    class Viewing(nn.Module):
        """Flattens a feature map with .view(), which a channels-last one refuses."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.conv(x)
            return self.fc(features.view(features.shape[0], -1))

    torch.manual_seed(0)
    viewing = LoadedModel(
        network=Viewing(),
        info=network_info("m2", "d1", 1.0),
        labels=LABELS,
        mean=None,
        image=ImageSpec(channels=1, width=28, height=28),
    )
    assert not viewing.channels_last
    assert all(p.is_contiguous() for p in viewing.network.parameters())
    assert viewing.probabilities(pixels).shape == (40, 10)
