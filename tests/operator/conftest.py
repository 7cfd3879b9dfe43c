"""Fixtures for cluster mode: a kmock API server over HTTP and a `kubernetes` client on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient, Configuration

from tests.operator.apiserver import RunningApiServer, running_apiserver


@pytest.fixture(scope="session")
def apiserver() -> Iterator[RunningApiServer]:
    with running_apiserver() as server:
        yield server


def client_for(url: str) -> ApiClient:
    config = Configuration(host=url)
    return ApiClient(config)


@pytest.fixture
def kube(apiserver: RunningApiServer) -> Iterator[ApiClient]:
    client = client_for(apiserver.url)
    try:
        yield client
    finally:
        client.close()
