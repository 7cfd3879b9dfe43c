"""`kdigits demo`: the whole DIGITS flow on one machine, on the embedded default.

It uses the kdigits server at KDIGITS_URL when one answers there, else starts `kdigits serve`
(with its private Ray head) as a child process; writes MNIST as image folders under
KDIGITS_HOME/data/mnist (the 10,000 digits shipped with kdigits, or the full set with
--download); creates the dataset (28x28 grayscale) and a LeNet model through the REST API;
follows both with a progress bar; prints the dataset statistics and the validation accuracy;
then stops the server it started (or keeps serving with --keep). Everything stays in
KDIGITS_HOME, so a later `kdigits serve` shows it again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from controller.client import ApiClient, ClientError
from controller.progress import wait
from controller.ray_local import free_port
from controller.settings import Settings

DATASET = "mnist"
READY_TIMEOUT_S = 240


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_server(settings: Settings, port: int) -> tuple[subprocess.Popen[bytes], str]:
    if not _port_free(port):
        port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = settings.home_dir / "demo-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    roots = [str(p) for p in settings.data_root_paths]
    if str(settings.home_dir) not in roots:
        env["KDIGITS_DATA_ROOTS"] = ":".join([*roots, str(settings.home_dir)])
    _say(f"starting kdigits serve on {url} (log: {log_path})")
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "controller", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    client = ApiClient(url)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kdigits serve exited with {process.returncode}; see {log_path}")
        with contextlib.suppress(Exception):  # not up yet
            if client.http.get("/readyz", timeout=2).status_code == 200:
                return process, url
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    raise RuntimeError(f"kdigits serve was not ready in {READY_TIMEOUT_S}s; see {log_path}")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def ensure_mnist(home: Path, download: bool) -> Path:
    from jobs.mnist import write_mnist_folders

    dest = home / "data" / "mnist"
    if (dest / "train").is_dir() and any((dest / "train").iterdir()):
        _say(f"MNIST folders already at {dest}")
        return dest
    _say(f"writing MNIST image folders under {dest}")
    write_mnist_folders(dest, offline=not download, log=lambda m: print(f"    {m}"))
    return dest


def ensure_dataset(client: ApiClient, mnist: Path) -> dict[str, Any]:
    try:
        existing = client.get("datasets", DATASET)
        if existing["status"]["phase"] in ("Failed", "Aborted"):
            _say(f"dataset {DATASET} {existing['status']['phase']} before: creating it again")
            for model in client.list("models"):
                if model["spec"]["dataset"] == DATASET:
                    client.delete("models", model["metadata"]["name"])
            client.delete("datasets", DATASET)
            time.sleep(1)
        else:
            _say(f"using dataset {DATASET} ({existing['status']['phase']})")
            return existing
    except ClientError as error:
        if error.status != 404:
            raise
    _say(f"creating dataset {DATASET}: 28x28 grayscale, 25% for validation")
    body = {
        "metadata": {"name": DATASET, "labels": {"kdigits.io/group": "demo"}},
        "spec": {
            "source": {"folder": {"train": str(mnist / "train"), "test": str(mnist / "test")}},
            "image": {"channels": 1, "width": 28, "height": 28},
            "split": {"valPercent": 25},
            "encoding": "none",
        },
    }
    return client.create("datasets", body)


def run_demo(epochs: int = 3, keep: bool = False, port: int = 5000, download: bool = False) -> int:
    started = time.monotonic()
    settings = Settings()
    url = os.environ.get("KDIGITS_URL") or f"http://127.0.0.1:{port}"
    client = ApiClient(url)
    process = None
    try:
        if client.healthy():
            _say(f"using the kdigits server at {url}")
        else:
            process, url = start_server(settings, port)
            client = ApiClient(url)
        mnist = ensure_mnist(settings.home_dir, download)
        ensure_dataset(client, mnist)
        dataset = wait(client, "datasets", DATASET)
        status = dataset["status"]
        if status["phase"] != "Succeeded":
            print(f"dataset {DATASET} {status['phase']}: {status.get('message')}")
            return 1
        images = ", ".join(f"{k} {v}" for k, v in status["images"].items())
        _say(f"dataset {DATASET}: {images}; {status.get('classes')} classes")
        name = f"lenet-{datetime.now():%Y%m%d-%H%M%S}"
        _say(f"training LeNet as model {name}: {epochs} epochs")
        client.create(
            "models",
            {
                "metadata": {"name": name, "labels": {"kdigits.io/group": "demo"}},
                "spec": {
                    "dataset": DATASET,
                    "network": {"standard": "lenet"},
                    "training": {"epochs": epochs, "batchSize": 64},
                    "solver": {"type": "sgd", "baseLr": 0.01},
                },
            },
        )
        model = wait(client, "models", name)
        status = model["status"]
        if status["phase"] != "Succeeded":
            print(f"model {name} {status['phase']}: {status.get('message')}")
            return 1
        metrics = status.get("metrics", {})
        accuracy = metrics.get("valAccuracy")
        elapsed = time.monotonic() - started
        print()
        print("kdigits demo: done in", f"{elapsed:.0f}s")
        print(f"  dataset   {DATASET}: {images}")
        print(f"  model     {name}: {status.get('epoch', 0):g} epochs, LeNet")
        if accuracy is not None:
            print(f"  validation accuracy: {accuracy * 100:.2f}%")
        if "valLoss" in metrics:
            print(f"  validation loss:     {metrics['valLoss']:.4f}")
        print(f"  metric series: {url}/api/v1/models/{name}/metrics")
        print(f"  Prometheus:    {url}/metrics     API docs: {url}/docs")
        print(f"  stored in {settings.home_dir} (run `kdigits serve` to see it again)")
        if keep and process is not None:
            print(f"\nserving at {url}; Ctrl-C to stop", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                process.wait()
        return 0
    finally:
        if process is not None:
            _say("stopping the server and its Ray head")
            stop_server(process)
