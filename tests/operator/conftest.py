"""Fixtures for cluster mode: a kmock API server over HTTP, a `kubernetes` client on it, and
a few hundred real MNIST digits as image folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kubernetes.client import ApiClient, Configuration

from tests.conftest import write_digit_folders
from tests.operator.apiserver import RunningApiServer, running_apiserver

PER_CLASS = 30


@pytest.fixture(scope="module")
def apiserver() -> Iterator[RunningApiServer]:
    with running_apiserver() as server:
        yield server


def client_for(url: str) -> ApiClient:
    config = Configuration(host=url)
    return ApiClient(config)


@pytest.fixture(scope="module")
def kube(apiserver: RunningApiServer) -> Iterator[ApiClient]:
    client = client_for(apiserver.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def mnist_folder(
    tmp_path_factory: pytest.TempPathFactory, mnist_arrays: tuple[np.ndarray, np.ndarray]
) -> Path:
    """300 real MNIST digits as `train/<digit>/*.png`: the layout of the examples' MinIO prefix."""
    images, labels = mnist_arrays
    return write_digit_folders(tmp_path_factory.mktemp("mnist"), images, labels, PER_CLASS)
