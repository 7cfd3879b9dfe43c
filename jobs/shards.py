"""The dataset shard format: one safetensors file per shard, chosen for fast, safe reads.

A shard holds up to a few thousand images of one split:
- `labels`: int64 [N], class indices into `labels.txt`;
- encoding `none`: `images`: uint8 [N, H, W, C], raw pixels, read with no decoding;
- encoding `png`/`jpg`: `data`: uint8 [total bytes], the encoded images back to back, and
  `offsets`: int64 [N + 1], image i being `data[offsets[i]:offsets[i+1]]`.
The safetensors header metadata records `encoding`, `height`, `width`, `channels`, `count`.
safetensors holds plain tensors only, so reading a shard never runs code (no pickle).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

ENCODINGS = ("none", "png", "jpg")
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Shard:
    images: np.ndarray  # uint8 [N, H, W, C]
    labels: np.ndarray  # int64 [N]


def encode_image(pixels: np.ndarray, encoding: str) -> bytes:
    """PNG or JPEG bytes for an [H, W, C] uint8 image."""
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    if encoding == "png":
        image.save(buffer, format="PNG", compress_level=1)
    elif encoding == "jpg":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    return buffer.getvalue()


def decode_image(data: bytes, channels: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return pixels[:, :, None] if channels == 1 else pixels


def write_shard(images: np.ndarray, labels: np.ndarray, encoding: str) -> bytes:
    """Serialise [N, H, W, C] uint8 images and their labels as a shard."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("images must be uint8 [N, H, W, C]")
    if len(images) != len(labels):
        raise ValueError("images and labels differ in length")
    count, height, width, channels = images.shape
    metadata = {
        "encoding": encoding,
        "count": str(count),
        "height": str(height),
        "width": str(width),
        "channels": str(channels),
    }
    tensors: dict[str, np.ndarray] = {"labels": np.ascontiguousarray(labels, dtype=np.int64)}
    if encoding == "none":
        tensors["images"] = np.ascontiguousarray(images)
    else:
        blobs = [encode_image(image, encoding) for image in images]
        offsets = np.zeros(count + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        tensors["data"] = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
        tensors["offsets"] = offsets
    return st_save(tensors, metadata=metadata)


def read_metadata(data: bytes) -> dict[str, str]:
    import json
    import struct

    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__", {}))


def read_shard(data: bytes) -> Shard:
    """Decode a shard into [N, H, W, C] uint8 pixels and int64 labels."""
    meta = read_metadata(data)
    tensors = st_load(data)
    labels = tensors["labels"].astype(np.int64)
    if meta.get("encoding", "none") == "none":
        return Shard(images=tensors["images"], labels=labels)
    shape = (int(meta["count"]), int(meta["height"]), int(meta["width"]), int(meta["channels"]))
    images = np.empty(shape, dtype=np.uint8)
    blob, offsets = tensors["data"], tensors["offsets"]
    for i in range(shape[0]):
        images[i] = decode_image(blob[offsets[i] : offsets[i + 1]].tobytes(), shape[3])
    return Shard(images=images, labels=labels)
