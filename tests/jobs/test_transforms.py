"""Batched data transformations on real tensors: flips flip, crops crop, means subtract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs.specs import HsvJitter, MeanSubtraction, TransformSpec
from jobs.transforms import BatchTransform, hsv_to_rgb, mean_tensor, rgb_to_hsv


def _images(batch: int = 8, channels: int = 1, height: int = 6, width: int = 5) -> torch.Tensor:
    count = batch * channels * height * width
    return (torch.arange(count) % 251).to(torch.uint8).reshape(batch, channels, height, width)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _transform(spec: TransformSpec, images: torch.Tensor, mean=None, crop=None) -> BatchTransform:
    _, channels, height, width = images.shape
    return BatchTransform(spec, mean, channels, height, width, crop)


def test_mean_subtraction_values(mnist_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    digits = torch.from_numpy(mnist_arrays[0][:64, None].copy())
    mean_hwc = digits.float().mean(0).permute(1, 2, 0).numpy()
    image_mean = mean_tensor(mean_hwc, MeanSubtraction.IMAGE, 1, 28, 28)
    pixel_mean = mean_tensor(mean_hwc, MeanSubtraction.PIXEL, 1, 28, 28)
    assert image_mean is not None and pixel_mean is not None
    assert image_mean.shape == (1, 28, 28) and pixel_mean.shape == (1, 1, 1)
    assert mean_tensor(mean_hwc, MeanSubtraction.NONE, 1, 28, 28) is None

    out = _transform(TransformSpec(), digits, image_mean).evaluate(digits)
    assert torch.allclose(out, digits.float() - torch.from_numpy(mean_hwc).permute(2, 0, 1))
    assert out.mean(0).abs().max() < 1e-3  # the batch's own mean image: zero on average
    out = _transform(TransformSpec(), digits, pixel_mean).evaluate(digits)
    assert torch.allclose(out, digits.float() - float(mean_hwc.mean()), atol=1e-4)
    assert abs(out.mean().item()) < 1e-3
    out = _transform(TransformSpec(), digits, None).evaluate(digits)
    assert torch.equal(out, digits.float())


def test_mean_accepts_the_layouts_datasets_store() -> None:
    rgb = np.random.default_rng(0).uniform(0, 255, (4, 5, 3)).astype(np.float32)
    chw = mean_tensor(rgb, MeanSubtraction.IMAGE, 3, 4, 5)
    assert chw is not None and torch.equal(chw, torch.from_numpy(rgb).permute(2, 0, 1))
    gray = mean_tensor(rgb[:, :, 0], MeanSubtraction.IMAGE, 1, 4, 5)
    assert gray is not None and gray.shape == (1, 4, 5)
    with pytest.raises(ValueError, match="mean image has shape"):
        mean_tensor(rgb, MeanSubtraction.IMAGE, 3, 8, 8)


def test_lr_flip_really_flips() -> None:
    images = _images()
    transform = _transform(TransformSpec(flip="lr"), images)
    out = transform.train(images, _gen(1))
    flipped = [torch.equal(o, images[i].float().flip(2)) for i, o in enumerate(out)]
    kept = [torch.equal(o, images[i].float()) for i, o in enumerate(out)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))  # each one or the other
    assert 0 < sum(flipped) < len(images)  # some of each in 8 draws with this seed
    ud = _transform(TransformSpec(flip="ud"), images).train(images, _gen(1))
    assert any(torch.equal(o, images[i].float().flip(1)) for i, o in enumerate(ud))
    assert not any(torch.equal(o, images[i].float().flip(2)) for i, o in enumerate(ud))


def test_flip_both_flips_each_axis() -> None:
    images = _images(batch=64)
    out = _transform(TransformSpec(flip="both"), images).train(images, _gen(3))
    kinds = set()
    for i, o in enumerate(out):
        x = images[i].float()
        for name, candidate in (
            ("none", x),
            ("lr", x.flip(2)),
            ("ud", x.flip(1)),
            ("both", x.flip(1).flip(2)),
        ):
            if torch.equal(o, candidate):
                kinds.add(name)
                break
        else:
            pytest.fail("an image came out neither flipped nor kept")
    assert kinds == {"none", "lr", "ud", "both"}


def test_random_crop_in_training_and_centre_crop_in_eval() -> None:
    images = _images(batch=32, channels=3, height=10, width=12)
    image_mean = torch.rand(3, 10, 12) * 100
    transform = _transform(TransformSpec(), images, image_mean, crop=6)
    assert transform.output_size == (6, 6)
    centre = transform.evaluate(images)
    assert centre.shape == (32, 3, 6, 6)
    expected = images[:, :, 2:8, 3:9].float() - image_mean[:, 2:8, 3:9]
    assert torch.allclose(centre, expected)
    crops = transform.train(images, _gen(5))
    assert crops.shape == (32, 3, 6, 6)
    offsets = set()
    for i, crop in enumerate(crops):
        found = [
            (top, left)
            for top in range(5)
            for left in range(7)
            if torch.allclose(
                crop,
                images[i, :, top : top + 6, left : left + 6].float()
                - image_mean[:, top : top + 6, left : left + 6],
            )
        ]
        assert found, "a training crop is not a window of its image minus the same mean window"
        offsets.add(found[0])
    assert len(offsets) > 5  # crops are random per sample, not one offset per batch


def test_crop_larger_than_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match=r"transform.cropSize 40 is larger than the 28x28"):
        BatchTransform(TransformSpec(), None, 1, 28, 28, crop_size=40)


def test_rotation_and_scale_keep_shape_and_change_pixels(
    mnist_arrays: tuple[np.ndarray, np.ndarray],
) -> None:
    digits = torch.from_numpy(mnist_arrays[0][:16, None].copy())
    out = _transform(TransformSpec(rotation=30, scale=0.2), digits).train(digits, _gen(2))
    assert out.shape == digits.shape
    changed = (out - digits.float()).abs().flatten(1).amax(1)
    assert (changed > 20).all()
    # No rotation and no scale: the resampling is the identity.
    same = _transform(TransformSpec(rotation=0, scale=0), digits).train(digits, _gen(2))
    assert torch.equal(same, digits.float())


def test_noise_has_the_requested_spread() -> None:
    images = torch.full((64, 1, 16, 16), 128, dtype=torch.uint8)
    out = _transform(TransformSpec(noise=0.1, mean_subtraction="none"), images).train(
        images, _gen()
    )
    residual = out - 128.0
    assert abs(residual.std().item() - 25.5) < 1.0
    assert abs(residual.mean().item()) < 0.5


def test_contrast_scales_around_the_image_mean() -> None:
    # Pixels in 100..156: a contrast change of up to 50% never clips.
    images = (torch.rand(32, 1, 8, 8, generator=_gen(8)) * 56 + 100).to(torch.uint8)
    out = _transform(TransformSpec(contrast=0.5), images).train(images, _gen(4))
    x = images.float()
    centre = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = ((out - centre) * (x - centre)).sum((1, 2, 3)) / ((x - centre) ** 2).sum((1, 2, 3))
    assert (factor > 0.49).all() and (factor < 1.51).all()
    assert factor.std() > 0.05  # drawn per image
    assert torch.allclose(out.mean(dim=(1, 2, 3)), centre.flatten(), atol=1e-3)


def test_hsv_round_trip_and_jitter() -> None:
    rgb = torch.rand(4, 3, 5, 5)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(rgb)), rgb, atol=1e-5)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    assert torch.allclose(rgb_to_hsv(red).flatten(), torch.tensor([0.0, 1.0, 1.0]))
    images = (torch.rand(16, 3, 4, 4) * 255).to(torch.uint8)
    spec = TransformSpec(hsv=HsvJitter(hue=0.2, saturation=0.3, value=0.3))
    out = _transform(spec, images).train(images, _gen(6))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255.001
    assert (out - images.float()).abs().mean() > 5
    gray = _images(batch=4)
    value_only = _transform(spec, gray).train(gray, _gen(6))
    ratio = value_only.sum((1, 2, 3)) / gray.float().sum((1, 2, 3))
    assert (ratio > 0.69).all() and (ratio < 1.31).all()


def test_training_draws_follow_the_generator() -> None:
    images = _images(batch=16, height=12, width=12)
    spec = TransformSpec(flip="both", rotation=10, noise=0.05)
    transform = _transform(spec, images, crop=8)
    assert torch.equal(transform.train(images, _gen(9)), transform.train(images, _gen(9)))
    assert not torch.equal(transform.train(images, _gen(9)), transform.train(images, _gen(10)))
