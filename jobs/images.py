"""Safe image decoding and DIGITS' four resize modes, for the dataset build's workers.

Images come from users, so decoding is defensive: only the formats DIGITS accepted are parsed
(never EPS and friends, which shell out), the file size and the pixel count are capped (the
pixel count is read from the header before any pixel is decoded, which stops decompression
bombs), and every failure is an `ImageRejected` with one short reason that the dataset stats
count. `resize()` reproduces DIGITS' `resize_image` (digits/utils/image.py) exactly:

- squash: resize to width x height, ignoring the aspect ratio;
- crop: scale so the image covers the target keeping the aspect ratio, centre-crop the excess;
- fill: scale so the image fits inside keeping the aspect ratio, then pad both ends of the
  short dimension with uniform random noise;
- half_crop: scale by the average of the width and height ratios, centre-crop the dimension
  that is too long and noise-pad the one that is too short.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from jobs.specs import ResizeMode

# Formats DIGITS accepted (png jpg jpeg bmp ppm pgm tif tiff gif webp); PPM covers PGM/PBM.
ALLOWED_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "GIF", "WEBP")
IMAGE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "bmp", "ppm", "pgm", "tif", "tiff", "gif", "webp"}
)

REASON_EMPTY = "empty file"
REASON_TOO_LARGE = "file too large"
REASON_NOT_IMAGE = "not an image"
REASON_TRUNCATED = "truncated"
REASON_BOMB = "too many pixels (decompression bomb)"
REASON_CORRUPT = "corrupt image"
REASON_NOT_FOUND = "file not found"
REASON_NOT_REGULAR = "not a regular file"
REASON_UNREADABLE = "unreadable file"

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

# PIL warns from Image.open() about images over its own limit (89M pixels); decode_image()
# refuses anything over DecodeLimits.max_pixels (50M by default) before decoding, so that
# warning only ever precedes a rejection. Silenced once here rather than per image, which
# costs a measurable share of decoding a small image.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageRejected(Exception):
    """The file cannot be used as an image; `reason` is one of the REASON_* strings."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """Caps applied before decoding: file bytes and width * height."""

    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 50_000_000


DEFAULT_LIMITS = DecodeLimits()


def has_image_extension(name: str) -> bool:
    """True for the file extensions DIGITS accepted, case-insensitively (not `.png` alone)."""
    stem, dot, extension = name.rpartition(".")
    return bool(stem) and extension.lower() in IMAGE_EXTENSIONS


def read_image_file(path: str, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of a regular file, refusing symlinks (at the last component) and big files."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ImageRejected(REASON_NOT_FOUND) from None
    except OSError as error:
        raise ImageRejected(REASON_UNREADABLE, error.strerror or "") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRejected(REASON_NOT_REGULAR)
        if info.st_size > limits.max_bytes:
            raise ImageRejected(REASON_TOO_LARGE, f"{info.st_size} bytes")
        data = _read_at_most(fd, limits.max_bytes + 1, info.st_size + 1)
    except OSError as error:
        raise ImageRejected(REASON_UNREADABLE, error.strerror or "") from None
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:
        raise ImageRejected(REASON_TOO_LARGE, f"over {limits.max_bytes} bytes")
    return data


def _read_at_most(fd: int, limit: int, expected: int) -> bytes:
    """Up to `limit` bytes from `fd`, read in `expected`-sized calls (one for a stable file)."""
    parts: list[bytes] = []
    total = 0
    while total < limit:
        part = os.read(fd, min(max(expected, 65536), limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decode_image(data: bytes, channels: int, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """uint8 [H, W, channels] pixels from encoded bytes; raises ImageRejected."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if not data:
        raise ImageRejected(REASON_EMPTY)
    if len(data) > limits.max_bytes:
        raise ImageRejected(REASON_TOO_LARGE, f"{len(data)} bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageRejected(REASON_BOMB) from None
    except Exception:  # PIL raises many types for garbage input
        raise ImageRejected(REASON_NOT_IMAGE) from None
    try:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageRejected(REASON_CORRUPT, "zero-sized image")
        if width * height > limits.max_pixels:
            raise ImageRejected(REASON_BOMB, f"{width}x{height}")
        try:
            image.load()
        except (EOFError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            message = str(error).lower()
            if isinstance(error, EOFError) or "truncat" in message:
                raise ImageRejected(REASON_TRUNCATED) from None
            raise ImageRejected(REASON_CORRUPT, str(error)[:200]) from None
        return to_channels(image, channels)
    finally:
        image.close()


def to_channels(image: Image.Image, channels: int) -> np.ndarray:
    """uint8 [H, W, channels]: grayscale (1) or RGB (3); 16-bit, palette and alpha handled."""
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image, dtype=np.int64)
        gray = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)
        image = Image.fromarray(gray)
    elif image.mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        image = Image.fromarray(gray)
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if channels == 1:
        pixels = np.asarray(image if image.mode == "L" else image.convert("L"))
        return pixels[:, :, None]
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _scale(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of [H, W, C] uint8 pixels to [height, width, C]."""
    if pixels.shape[0] == height and pixels.shape[1] == width:
        return pixels
    single = pixels.shape[2] == 1
    image = Image.fromarray(pixels[:, :, 0] if single else pixels)
    out = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return out[:, :, None] if single else out


def _round(value: float) -> int:
    """Round half away from zero, as DIGITS' Python 2 `round` did (sizes are positive)."""
    return int(value + 0.5)


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def resize(
    pixels: np.ndarray,
    width: int,
    height: int,
    mode: ResizeMode | str,
    rng: np.random.Generator,
) -> np.ndarray:
    """[height, width, C] uint8 pixels resized from [H, W, C] with DIGITS' semantics."""
    mode = ResizeMode(mode)
    in_height, in_width, channels = pixels.shape
    if in_height == height and in_width == width:
        return pixels
    width_ratio = in_width / width
    height_ratio = in_height / height
    if mode is ResizeMode.SQUASH or width_ratio == height_ratio:
        return _scale(pixels, width, height)
    wide = width_ratio > height_ratio  # relatively wider than the target
    if mode is ResizeMode.CROP:
        if wide:
            scaled = _scale(pixels, _round(in_width / height_ratio), height)
            start = _round((scaled.shape[1] - width) / 2)
            return scaled[:, start : start + width]
        scaled = _scale(pixels, width, _round(in_height / width_ratio))
        start = _round((scaled.shape[0] - height) / 2)
        return scaled[start : start + height, :]
    if mode is ResizeMode.FILL:
        if wide:
            fit_height = max(1, _round(in_height / width_ratio))
            fit_height += (height - fit_height) % 2
            scaled = _scale(pixels, width, fit_height)
        else:
            fit_width = max(1, _round(in_width / height_ratio))
            fit_width += (width - fit_width) % 2
            scaled = _scale(pixels, fit_width, height)
    else:  # half_crop
        ratio = (width_ratio + height_ratio) / 2
        new_width = max(1, _round(in_width / ratio))
        new_height = max(1, _round(in_height / ratio))
        if wide:
            new_height += (height - new_height) % 2
        else:
            new_width += (width - new_width) % 2
        scaled = _scale(pixels, new_width, new_height)
        if wide:
            start = _round((new_width - width) / 2)
            scaled = scaled[:, start : start + width]
        else:
            start = _round((new_height - height) / 2)
            scaled = scaled[start : start + height, :]
    if wide:
        pad = (height - scaled.shape[0]) // 2
        band = (pad, width, channels)
        return np.concatenate([_noise(rng, band), scaled, _noise(rng, band)], axis=0)
    pad = (width - scaled.shape[1]) // 2
    band = (height, pad, channels)
    return np.concatenate([_noise(rng, band), scaled, _noise(rng, band)], axis=1)
