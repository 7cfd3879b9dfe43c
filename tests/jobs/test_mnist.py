"""MNIST folders: the idx parser, a real HTTP download, redirects, and the offline fallback."""

from __future__ import annotations

import gzip
import http.server
import struct
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jobs.mnist import (
    IDX_FILES,
    SHIPPED_NPZ,
    DownloadError,
    IdxError,
    fetch,
    gunzip_capped,
    load_mnist,
    main,
    parse_idx,
    write_mnist_folders,
)
from jobs.ray_free_port import free_port  # type: ignore[import-not-found]  # noqa: F401

Digits = tuple[np.ndarray, np.ndarray]


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's idx format for uint8 arrays, written independently of the parser."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
