"""End-to-end fixtures: a real `kdigits serve` subprocess on a real local Ray head, real jobs,
and a few hundred real MNIST digits as image folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.ray_local import LocalRayHead, free_port
from tests.conftest import write_digit_folders

REPO = Path(__file__).resolve().parents[2]
PER_CLASS = 30  # 300 digits: a tiny but real dataset
TERMINAL = {"Succeeded", "Failed", "Aborted"}


class Server:
    """`python -m controller serve` as a child process, restartable and killable."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.port = free_port()
        self.env = {**os.environ, **env, "KDIGITS_HOME": str(home), "PYTHONPATH": str(REPO)}
        self.env.pop("KDIGITS_URL", None)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = home / "serve.log"
        self.http = httpx.Client(base_url=self.url, timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> Server:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "controller", "serve", "--port", str(self.port)],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited {self.process.returncode}:\n{self.log()}")
            try:
                if self.http.get("/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"serve not ready in {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 60) -> int | None:
        process, self.process = self.process, None
        if process is None:
            return None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def kill9(self) -> None:
        process, self.process = self.process, None
        assert process is not None
        process.kill()
        process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ REST helpers

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.delete(path, **kwargs)

    def wait_for(
        self, path: str, until: Callable[[dict[str, Any]], bool], timeout: float = 300
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] = {}
        while time.monotonic() < deadline:
            response = self.http.get(path)
            obj = response.json()
            if until(obj):
                return obj
            time.sleep(0.5)
        raise AssertionError(f"timed out on {path}: {obj.get('status')}\n{self.log()[-3000:]}")

    def wait_finished(self, path: str, timeout: float = 300) -> dict[str, Any]:
        return self.wait_for(path, lambda o: o["status"]["phase"] in TERMINAL, timeout)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory, mnist_arrays: Any) -> Path:
    images, labels = mnist_arrays
    return write_digit_folders(tmp_path_factory.mktemp("digits"), images, labels, PER_CLASS)


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, ray_head: LocalRayHead, digits_dir: Path
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("kdigits-home")
    srv = Server(
        home,
        {
            "KDIGITS_RAY_ADDRESS": ray_head.dashboard_url,
            "KDIGITS_DATA_ROOTS": f"{digits_dir}:{home}",
            "KDIGITS_RECONCILE_INTERVAL": "0.3",
            "KDIGITS_MAX_RUNNING_JOBS": "2",
        },
    ).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def digits_dataset(server: Server, digits_dir: Path) -> dict[str, Any]:
    """The shared Dataset `digits`: 28x28 grayscale, 25% validation, built once."""
    body = {
        "metadata": {"name": "digits", "labels": {"kdigits.io/group": "e2e"}},
        "spec": {
            "source": {"folder": {"train": str(digits_dir / "train")}},
            "image": {"channels": 1, "width": 28, "height": 28},
            "split": {"valPercent": 25, "seed": 1},
            "encoding": "png",
        },
    }
    r = server.post("/api/v1/datasets", json=body)
    assert r.status_code == 201, r.text
    done = server.wait_finished("/api/v1/datasets/digits", timeout=180)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    return done


def lenet(name: str, epochs: int, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "dataset": "digits",
            "network": {"standard": "lenet"},
            "training": {"epochs": epochs, "batchSize": 32, "seed": 1},
            "solver": {"type": "sgd", "baseLr": 0.01},
            **spec,
        },
    }
