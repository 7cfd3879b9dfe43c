"""Shared fixtures: real components (a local Ray head, an HTTP S3 endpoint) and real data.

In CI (`CI=true`) a missing component fails the test; elsewhere it is skipped with a reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from controller.ray_local import LocalRayHead, local_ray_head

REPO = Path(__file__).resolve().parents[1]
MNIST_NPZ = Path(os.environ.get("KDIGITS_MNIST_NPZ", REPO.parent / "shared/data/mnist10k.npz"))
IN_CI = os.environ.get("CI", "").lower() == "true"


def write_digit_folders(root: Path, images: np.ndarray, labels: np.ndarray, per_class: int) -> Path:
    """The first `per_class` digits of each class as `root/train/<digit>/NNN.png`: a small but
    real folder dataset, the layout DIGITS (and the examples' MinIO prefix) use."""
    for digit in range(10):
        folder = root / "train" / str(digit)
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == digit)[:per_class]):
            Image.fromarray(images[index]).save(folder / f"{i:03d}.png")
    return root


def require(condition: bool, reason: str) -> None:
    """Skip locally, fail in CI, when a real component the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mnist_npz() -> Path:
    require(MNIST_NPZ.exists(), f"{MNIST_NPZ} not found")
    return MNIST_NPZ


@pytest.fixture(scope="session")
def mnist_arrays(mnist_npz: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(mnist_npz) as data:
        return data["images"], data["labels"]


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalRayHead]:
    """One real local Ray head for the whole session (start-up is the expensive part)."""
    with local_ray_head(num_cpus=2) as head:
        yield head


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server over real HTTP on loopback."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
