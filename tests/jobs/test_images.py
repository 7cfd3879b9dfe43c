"""Safe decoding (every rejection reason) and DIGITS' resize modes on real pixels."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.images import (
    DecodeLimits,
    ImageRejected,
    decode_image,
    has_image_extension,
    read_image_file,
    resize,
)
from tests.jobs.dataset_helpers import _png_chunk, bomb_png, png_bytes, truncated_png

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rejection(data: bytes, limits: DecodeLimits | None = None) -> str:
    with pytest.raises(ImageRejected) as error:
        decode_image(data, 1, limits or DecodeLimits())
    return error.value.reason


# --------------------------------------------------------------------------- decoding


def test_mnist_digit_round_trips_exactly(mnist_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = mnist_arrays
    for digit in images[::1000]:
        pixels = decode_image(png_bytes(digit), 1)
        assert pixels.shape == (28, 28, 1) and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels[:, :, 0], digit)
        color = decode_image(png_bytes(digit), 3)
        assert color.shape == (28, 28, 3)
        for channel in range(3):
            np.testing.assert_array_equal(color[:, :, channel], digit)


def test_color_to_gray_uses_luma() -> None:
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[:, 0] = RED
    pixels[:, 1] = GREEN
    pixels[:, 2] = BLUE
    gray = decode_image(png_bytes(pixels), 1)[0, :, 0]
    assert gray.tolist() == [76, 150, 29]  # ITU-R 601-2: 0.299 R, 0.587 G, 0.114 B


def test_rgba_drops_alpha_and_palette_with_transparency_decodes() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    np.testing.assert_array_equal(decode_image(png_bytes(rgba), 3), rgba[..., :3])
    web_color = (204, 102, 51)  # in PIL's default web palette, so quantising keeps it
    palette = Image.fromarray(np.full((4, 4, 3), web_color, np.uint8)).convert("P")
    data = encoded(palette, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(decode_image(data, 3)[0, 0], web_color)


def test_sixteen_bit_gray_scales_to_eight_bits() -> None:
    wide = np.array([[0, 257, 32896, 65535]], np.uint16)
    for fmt in ("PNG", "TIFF"):
        data = encoded(Image.fromarray(wide), fmt)
        assert decode_image(data, 1)[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("fmt", ["JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"])
def test_every_digits_format_decodes(fmt: str, mnist_arrays: tuple[np.ndarray, np.ndarray]) -> None:
    digit = mnist_arrays[0][5]
    pixels = decode_image(encoded(Image.fromarray(digit), fmt), 1)[:, :, 0]
    assert pixels.shape == (28, 28)
    lossy = fmt in ("JPEG", "WEBP")
    assert np.abs(pixels.astype(int) - digit).max() <= (40 if lossy else 0)


def test_formats_outside_digits_list_are_not_parsed() -> None:
    icon = encoded(Image.fromarray(np.zeros((16, 16, 3), np.uint8)), "ICO")
    assert Image.open(io.BytesIO(icon)).format == "ICO"  # PIL could, we don't
    assert rejection(icon) == "not an image"


def test_hostile_inputs_are_rejected_with_their_reason(
    mnist_arrays: tuple[np.ndarray, np.ndarray],
) -> None:
    digit = mnist_arrays[0][0]
    assert rejection(b"") == "empty file"
    assert rejection(b"just some text, not a picture\n" * 10) == "not an image"
    assert rejection(truncated_png(digit)) == "truncated"
    assert rejection(bomb_png(30000, 30000)) == "too many pixels (decompression bomb)"
    # Under PIL's own bomb limit but over ours: refused from the header, before decoding.
    assert rejection(bomb_png(8000, 7000)) == "too many pixels (decompression bomb)"
    assert rejection(png_bytes(digit), DecodeLimits(max_pixels=28 * 27)) == (
        "too many pixels (decompression bomb)"
    )
    assert rejection(png_bytes(digit), DecodeLimits(max_bytes=10)) == "file too large"


def test_garbage_pixel_data_is_corrupt_not_truncated() -> None:
    header = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    garbage = bytes(range(256)) * 2
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", garbage)
        + _png_chunk(b"IEND", b"")
    )
    assert rejection(data) == "corrupt image"


# --------------------------------------------------------------------------- reading files


def test_read_image_file_caps_and_refusals(tmp_path: Path) -> None:
    real = tmp_path / "a.png"
    real.write_bytes(b"x" * 100)
    assert read_image_file(str(real)) == b"x" * 100

    def reason(path: Path, limits: DecodeLimits | None = None) -> str:
        with pytest.raises(ImageRejected) as error:
            read_image_file(str(path), limits or DecodeLimits())
        return error.value.reason

    assert reason(real, DecodeLimits(max_bytes=99)) == "file too large"
    assert reason(tmp_path / "missing.png") == "file not found"
    link = tmp_path / "link.png"
    link.symlink_to(real)
    assert reason(link) == "unreadable file"  # a link swapped in after listing is not followed
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    assert reason(fifo) == "not a regular file"  # and reading it does not block


def test_image_extensions_are_digits_list_case_insensitive() -> None:
    for name in ("a.png", "b.JPG", "c.jpeg", "d.Bmp", "e.ppm", "f.pgm", "g.tif", "h.TIFF"):
        assert has_image_extension(name), name
    for name in ("i.gif", "j.webp"):
        assert has_image_extension(name)
    for name in ("notes.txt", "png", ".png", "archive.png.gz", "x.svg"):
        assert not has_image_extension(name), name


# --------------------------------------------------------------------------- resizing


@pytest.fixture
def stripes() -> np.ndarray:
    """40 wide x 20 high: columns 0-9 red, 10-29 green, 30-39 blue."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = RED
    pixels[:, 10:30] = GREEN
    pixels[:, 30:] = BLUE
    return pixels


def close_to(pixel: np.ndarray, color: tuple[int, int, int], tolerance: int = 12) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(color)).max() <= tolerance)


def is_noise(band: np.ndarray) -> bool:
    """Uniform noise: many distinct values over the whole 0..255 range, and not the content."""
    values = band.reshape(-1)
    return len(np.unique(values)) > min(64, values.size // 3) and values.min() < 40 < 215 < (
        values.max()
    )


def test_same_size_is_returned_untouched(stripes: np.ndarray) -> None:
    assert resize(stripes, 40, 20, "fill", np.random.default_rng(0)) is stripes


def test_squash_ignores_the_aspect_ratio(stripes: np.ndarray) -> None:
    out = resize(stripes, 20, 20, "squash", np.random.default_rng(0))
    assert out.shape == (20, 20, 3)
    for row in (0, 10, 19):
        assert close_to(out[row, 1], RED)  # the left quarter is still red
        assert close_to(out[row, 10], GREEN)
        assert close_to(out[row, 18], BLUE)


def test_crop_keeps_the_centre(stripes: np.ndarray) -> None:
    out = resize(stripes, 20, 20, "crop", np.random.default_rng(0))
    assert out.shape == (20, 20, 3)
    assert (out == np.array(GREEN, np.uint8)).all()  # columns 10..29, unscaled: all green
    tall = np.ascontiguousarray(stripes.transpose(1, 0, 2))  # 20 wide x 40 high
    out = resize(tall, 20, 20, "crop", np.random.default_rng(0))
    assert (out == np.array(GREEN, np.uint8)).all()  # rows 10..29


def test_fill_pads_the_short_side_with_noise(stripes: np.ndarray) -> None:
    out = resize(stripes, 20, 20, "fill", np.random.default_rng(1))
    assert out.shape == (20, 20, 3)
    # Scaled to 20x10, centred: rows 5..14 hold the image, 5 noise rows above and below.
    top, content, bottom = out[:5], out[5:15], out[15:]
    assert is_noise(top) and is_noise(bottom)
    assert not np.array_equal(top, bottom)
    for row in content:
        assert close_to(row[1], RED) and close_to(row[10], GREEN) and close_to(row[18], BLUE)
    again = resize(stripes, 20, 20, "fill", np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)  # the noise comes from the seeded generator


def test_fill_on_a_tall_image_pads_left_and_right() -> None:
    tall = np.full((40, 10, 1), 128, np.uint8)
    out = resize(tall, 20, 20, "fill", np.random.default_rng(2))
    assert out.shape == (20, 20, 1)
    # Scaled to 5x20, widened to 6 so both bands are equal: 7 noise columns each side.
    assert (out[:, 7:13] == 128).all()
    assert is_noise(out[:, :7]) and is_noise(out[:, 13:])


def test_fill_noise_covers_zero_to_255() -> None:
    line = np.full((1, 200, 1), 7, np.uint8)
    out = resize(line, 200, 200, "fill", np.random.default_rng(3))
    noise = np.concatenate([out[:99], out[101:]])
    assert noise.min() == 0 and noise.max() == 255
    assert abs(float(noise.mean()) - 127.5) < 2


def test_half_crop_crops_half_and_fills_half(stripes: np.ndarray) -> None:
    out = resize(stripes, 20, 20, "half_crop", np.random.default_rng(4))
    assert out.shape == (20, 20, 3)
    # Ratios 2 and 1 average 1.5: scaled to 27x13, height evened to 14; 3 noise rows above
    # and below; width 27 centre-cropped from column 4 (of red 0-6, green 7-19, blue 20-26).
    assert is_noise(out[:3]) and is_noise(out[17:])
    # Green covers scaled columns 6.67..20, i.e. output 2.67..16: columns 3-15 are pure green.
    for row in out[3:17]:
        assert close_to(row[0], RED) and close_to(row[1], RED)
        assert close_to(row[17], BLUE) and close_to(row[19], BLUE)
        assert [c for c in range(20) if close_to(row[c], GREEN)] == list(range(3, 16))


def test_resize_rejects_unknown_modes(stripes: np.ndarray) -> None:
    with pytest.raises(ValueError):
        resize(stripes, 20, 20, "stretch", np.random.default_rng(0))
