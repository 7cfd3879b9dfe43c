"""`kdigits serve --kubernetes` as a process, on a kubeconfig that points at kmock's API server:
the store, the operator and the access reviews all use the kubeconfig's server and token, the
operator handles what kubectl applies, and REST wants a Kubernetes bearer token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes.client import ApiClient

from controller.ray_local import free_port
from tests.operator.apiserver import RunningApiServer
from tests.operator.helpers import REPO, apply, get, wait_for

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{url}"}}}}]
users: [{{name: kdigits, user: {{token: controller-token}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: kdigits}}}}]
current-context: kmock
"""


@pytest.fixture(scope="module")
def serve(apiserver: RunningApiServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("home")
    kubeconfig = home / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG.format(url=apiserver.url))
    port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "KDIGITS_HOME": str(home),
        "KDIGITS_RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",  # no Ray needed here
        "KDIGITS_DATA_ROOTS": str(home),
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "controller", "serve", "--kubernetes"]
    command += ["--host", "0.0.0.0", "--port", str(port)]  # no KDIGITS_TOKEN: RBAC instead
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        assert process.wait(30) == 0, log.read_text()


def test_serve_kubernetes_runs_the_operator_with_the_kubeconfig(
    serve: str, apiserver: RunningApiServer, kube: ApiClient, tmp_path: Path
) -> None:
    # Poll like a readiness probe: the operator starts after HTTP answers. Ray is absent here
    # on purpose, so /readyz as a whole stays 503; the other checks must turn ok.
    deadline = time.monotonic() + 60
    while (checks := httpx.get(f"{serve}/readyz").json()["checks"])["operator"] != "ok":
        assert time.monotonic() < deadline, checks
        time.sleep(0.3)
    assert checks["store"] == "ok" and checks["operator"] == "ok" and checks["reconciler"] == "ok"
    assert httpx.get(f"{serve}/api/v1/models").status_code == 401
    assert httpx.get(f"{serve}/metrics").status_code == 200
    body = {
        "apiVersion": "kdigits.io/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m"},
        "spec": {"dataset": "missing", "network": {"standard": "lenet"}},
    }
    apply(kube, body, "team-s")
    failed = wait_for(
        lambda: get(kube, "Model", "m", "team-s"),
        lambda o: (o.get("status") or {}).get("phase") == "Failed",
        30,
        "the served operator to handle the model",
    )
    assert failed["metadata"]["finalizers"] == ["kdigits.io/finalizer"]
    assert 'dataset "missing" does not exist' in failed["status"]["message"]
    seen = apiserver.call(
        lambda: {
            (r.headers.get("User-Agent", "").split("/")[0], r.headers.get("Authorization"))
            for r in apiserver.api
            if r.resource is not None and r.resource.group == "kdigits.io"
        }
    )
    assert ("kopf", "Bearer controller-token") in seen  # the operator
    assert ("OpenAPI-Generator", "Bearer controller-token") in seen  # the store
