"""DIGITS' data transformations, done on whole batches of tensors so they cost next to nothing.

Input: uint8 [B, C, H, W] pixels (on the training device). Output: float32 [B, C, h, w] in
0..255 units with the mean subtracted (each network applies its own input scale). Training
order: random crop (the mean image cropped at the same place), contrast and HSV jitter on the
raw pixels, mean subtraction, random flips, random rotation and scale (one affine resample),
Gaussian noise. Evaluation: centre crop and mean subtraction only. Every random draw comes
from the generator passed in, so a seeded run is reproducible. No per-sample Python.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional

from jobs.specs import Flip, MeanSubtraction, TransformSpec


def mean_tensor(
    mean: np.ndarray | None, mode: MeanSubtraction, channels: int, height: int, width: int
) -> torch.Tensor | None:
    """The mean to subtract as float32 [C, H, W] (image) or [C, 1, 1] (pixel), or None.

    Accepts the dataset's mean.npy as [H, W, C], [H, W] (grayscale), [C, H, W] or a per-channel
    [C] vector (which can only serve pixel subtraction).
    """
    if mode == MeanSubtraction.NONE or mean is None:
        return None
    array = np.asarray(mean, dtype=np.float32)
    if array.ndim == 1:
        if array.shape[0] != channels:
            raise ValueError(f"mean has {array.shape[0]} channels, images have {channels}")
        return torch.from_numpy(array.copy()).reshape(channels, 1, 1)
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[2] == channels and array.shape[:2] == (height, width):
        array = array.transpose(2, 0, 1)
    if array.shape != (channels, height, width):
        raise ValueError(
            f"mean image has shape {mean.shape}, images are {channels}x{height}x{width}"
        )
    image = torch.from_numpy(np.ascontiguousarray(array))
    if mode == MeanSubtraction.PIXEL:
        return image.mean(dim=(1, 2), keepdim=True)
    return image


def _gather_crop(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: int, width: int
) -> torch.Tensor:
    """Per-sample crops: out[b] = x[b, :, top[b]:top[b]+height, left[b]:left[b]+width]."""
    rows = top[:, None] + torch.arange(height, device=x.device)
    cols = left[:, None] + torch.arange(width, device=x.device)
    batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
    return x[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in 0..1 to HSV in 0..1."""
    r, g, b = rgb.unbind(1)
    maxc = rgb.amax(1)
    minc = rgb.amin(1)
    span = maxc - minc
    flat = span == 0
    ones = torch.ones_like(maxc)
    sat = span / torch.where(maxc == 0, ones, maxc)
    divisor = torch.where(flat, ones, span)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0, 1.0)
    return torch.stack((hue, sat, maxc), 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] HSV in 0..1 to RGB in 0..1."""
    hue, sat, val = hsv.unbind(1)
    sector = torch.floor(hue * 6.0)
    frac = hue * 6.0 - sector
    sector = sector.long() % 6
    p = val * (1.0 - sat)
    q = val * (1.0 - sat * frac)
    t = val * (1.0 - sat * (1.0 - frac))
    table = torch.stack(
        (
            torch.stack((val, q, p, p, t, val), 1),
            torch.stack((t, val, val, q, p, p), 1),
            torch.stack((p, p, t, val, val, q), 1),
        ),
        1,
    )  # [B, 3, 6, H, W]
    index = sector[:, None, None].expand(-1, 3, 1, -1, -1)
    return table.gather(2, index).squeeze(2)


class BatchTransform:
    """Applies a TransformSpec to uint8 batches, for training or evaluation."""

    def __init__(
        self,
        spec: TransformSpec,
        mean: torch.Tensor | None,
        channels: int,
        height: int,
        width: int,
        crop_size: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        if crop_size is not None and (crop_size > height or crop_size > width):
            raise ValueError(
                f"transform.cropSize {crop_size} is larger than the {height}x{width} images"
            )
        self.spec = spec
        self.channels = channels
        self.height = height
        self.width = width
        self.crop = crop_size
        self.device = torch.device(device)
        self.mean = mean.to(self.device, torch.float32) if mean is not None else None
        hsv = spec.hsv
        self._hsv = hsv.hue > 0 or hsv.saturation > 0 or hsv.value > 0
        self._affine = spec.rotation > 0 or spec.scale > 0

    @property
    def output_size(self) -> tuple[int, int]:
        if self.crop is None:
            return self.height, self.width
        return self.crop, self.crop

    def _uniform(self, n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
        return torch.rand(n, generator=gen, device=self.device) * (high - low) + low

    def _mean_crop(
        self, top: torch.Tensor | None, left: torch.Tensor | None
    ) -> torch.Tensor | None:
        if self.mean is None or self.crop is None or self.mean.shape[1] == 1:
            return self.mean
        assert top is not None and left is not None
        expanded = self.mean.unsqueeze(0).expand(top.shape[0], -1, -1, -1)
        return _gather_crop(expanded, top, left, self.crop, self.crop)

    def evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """Centre crop and mean subtraction."""
        x = images
        mean = self.mean
        if self.crop is not None:
            top = (self.height - self.crop) // 2
            left = (self.width - self.crop) // 2
            x = x[:, :, top : top + self.crop, left : left + self.crop]
            if mean is not None and mean.shape[1] != 1:
                mean = mean[:, top : top + self.crop, left : left + self.crop]
        out = x.float()
        return out - mean if mean is not None else out

    def train(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Every training augmentation the spec asks for, drawn per sample."""
        batch = images.shape[0]
        x = images
        top = left = None
        if self.crop is not None:
            top = torch.randint(
                0, self.height - self.crop + 1, (batch,), generator=gen, device=self.device
            )
            left = torch.randint(
                0, self.width - self.crop + 1, (batch,), generator=gen, device=self.device
            )
            x = _gather_crop(x, top, left, self.crop, self.crop)
        out = x.float()
        if self.spec.contrast > 0:
            out = self._contrast(out, gen)
        if self._hsv:
            out = self._hsv_jitter(out, gen)
        mean = self._mean_crop(top, left)
        if mean is not None:
            out = out - mean
        if self.spec.flip != Flip.NONE:
            out = self._flip(out, gen)
        if self._affine:
            out = self._rotate_scale(out, gen)
        if self.spec.noise > 0:
            noise = torch.randn(out.shape, generator=gen, device=self.device)
            out = out + noise * (self.spec.noise * 255.0)
        return out

    def _contrast(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c = self.spec.contrast
        factor = self._uniform(x.shape[0], 1.0 - c, 1.0 + c, gen).view(-1, 1, 1, 1)
        centre = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - centre) * factor + centre).clamp_(0.0, 255.0)

    def _hsv_jitter(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        hsv_spec = self.spec.hsv
        n = x.shape[0]
        value = self._uniform(n, 1.0 - hsv_spec.value, 1.0 + hsv_spec.value, gen).view(-1, 1, 1)
        if self.channels != 3:  # grayscale: only the value (brightness) applies
            return (x * value.unsqueeze(1)).clamp_(0.0, 255.0)
        hsv = rgb_to_hsv(x / 255.0)
        hue_shift = self._uniform(n, -hsv_spec.hue, hsv_spec.hue, gen).view(-1, 1, 1)
        sat = self._uniform(n, 1.0 - hsv_spec.saturation, 1.0 + hsv_spec.saturation, gen)
        h = torch.remainder(hsv[:, 0] + hue_shift, 1.0)
        s = (hsv[:, 1] * sat.view(-1, 1, 1)).clamp(0.0, 1.0)
        v = (hsv[:, 2] * value).clamp(0.0, 1.0)
        return hsv_to_rgb(torch.stack((h, s, v), 1)) * 255.0

    def _flip(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        if self.spec.flip in (Flip.LR, Flip.BOTH):
            mask = torch.rand(n, generator=gen, device=self.device) < 0.5
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
        if self.spec.flip in (Flip.UD, Flip.BOTH):
            mask = torch.rand(n, generator=gen, device=self.device) < 0.5
            x = torch.where(mask.view(-1, 1, 1, 1), x.flip(2), x)
        return x

    def _rotate_scale(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        angle = self._uniform(n, -self.spec.rotation, self.spec.rotation, gen) * (math.pi / 180)
        scale = self._uniform(n, 1.0 - self.spec.scale, 1.0 + self.spec.scale, gen)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        zeros = torch.zeros_like(cos)
        theta = torch.stack((cos, -sin, zeros, sin, cos, zeros), 1).view(n, 2, 3)
        grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
        return functional.grid_sample(
            x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
