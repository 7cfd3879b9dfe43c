"""Control-plane overhead: what kdigits adds on top of Ray, and its queue under load.

1. Wall time from `POST /api/v1/models` to the model reading Succeeded, minus the Ray job's own
   run time (Ray's start_time to end_time), for a 1-epoch LeNet on a small MNIST dataset: the
   time the controller takes to submit the job and to notice it finished (goal: under 3 s).
2. 50 models POSTed at once with KDIGITS_MAX_RUNNING_JOBS=2: every one is accepted (201), and
   while they drain the number Running (by the API, and non-terminal in Ray) never exceeds the
   limit. After a bounded observation window the rest are aborted and everything is deleted.

Runs `kdigits serve` as a subprocess on a private local Ray head. No arguments; the digits come
from ../shared/data/mnist10k.npz (override with KDIGITS_MNIST_NPZ). Last line:
`RESULT overhead_s=... submitted=... max_running=... limit=...`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.ray_backend import RayBackend  # noqa: E402
from controller.ray_local import free_port, local_ray_head  # noqa: E402

NPZ = Path(os.environ.get("KDIGITS_MNIST_NPZ", REPO.parent / "shared/data/mnist10k.npz"))
PER_CLASS = 50
CONCURRENT = 50
LIMIT = 2
OBSERVE_S = 75.0
TERMINAL = {"Succeeded", "Failed", "Aborted"}


def write_digits(root: Path) -> Path:
    with np.load(NPZ, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    for digit in range(10):
        folder = root / "train" / str(digit)
        folder.mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == digit)[:PER_CLASS]):
            Image.fromarray(images[index]).save(folder / f"{i:03d}.png")
    return root / "train"


def start_serve(home: Path, ray_url: str, data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "KDIGITS_HOME": str(home),
        "KDIGITS_RAY_ADDRESS": ray_url,
        "KDIGITS_DATA_ROOTS": str(data),
        "KDIGITS_MAX_RUNNING_JOBS": str(LIMIT),
        "PYTHONPATH": str(REPO),
    }
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "controller", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"serve did not start: {(home / 'serve.log').read_text()[-3000:]}")


def lenet(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "dataset": "digits",
            "network": {"standard": "lenet"},
            "training": {"epochs": 1, "batchSize": 64},
            "maxRetries": 0,
        },
    }


def wait_phase(http: httpx.Client, path: str, timeout: float = 600, poll: float = 0.05) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = http.get(path).json()
        if obj["status"]["phase"] in TERMINAL:
            return obj  # type: ignore[no-any-return]
        time.sleep(poll)
    raise TimeoutError(path)


def measure_overhead(http: httpx.Client, ray: RayBackend) -> dict[str, float]:
    start = time.time()
    response = http.post("/api/v1/models", json=lenet("overhead"))
    assert response.status_code == 201, response.text
    obj = wait_phase(http, "/api/v1/models/overhead")
    seen = time.time()
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    info = ray.info(obj["status"]["submissionId"])
    assert info is not None and info.start_time and info.end_time
    job_s = info.end_time - info.start_time
    return {
        "wall_s": seen - start,
        "job_s": job_s,
        "overhead_s": (seen - start) - job_s,
        "submit_s": info.start_time - start,
        "notice_s": seen - info.end_time,
    }


def flood(http: httpx.Client, ray: RayBackend) -> tuple[int, int, int]:
    names = [f"flood-{i:02d}" for i in range(CONCURRENT)]
    with ThreadPoolExecutor(CONCURRENT) as pool:
        codes = list(
            pool.map(lambda n: http.post("/api/v1/models", json=lenet(n)).status_code, names)
        )
    accepted = sum(code == 201 for code in codes)
    max_running = max_ray = 0
    deadline = time.monotonic() + OBSERVE_S
    finished = 0
    while time.monotonic() < deadline:
        items = http.get("/api/v1/models").json()["items"]
        phases = [i["status"]["phase"] for i in items if i["metadata"]["name"].startswith("flood")]
        running = phases.count("Running")
        finished = sum(p in TERMINAL for p in phases)
        in_ray = sum(
            1
            for sid in ray.list_ids("kdigits-model-")
            if (info := ray.info(sid)) is not None and not info.terminal
        )
        max_running, max_ray = max(max_running, running), max(max_ray, in_ray)
        if finished == CONCURRENT:
            break
        time.sleep(0.25)
    waiting = [
        i["status"].get("waitingFor")
        for i in http.get("/api/v1/models").json()["items"]
        if i["status"]["phase"] == "Queued"
    ]
    print(
        f"flood: {accepted}/{CONCURRENT} accepted, {finished} finished in {OBSERVE_S:.0f}s, "
        f"max running {max_running} (API) / {max_ray} (Ray), limit {LIMIT}; "
        f"a queued one waits for: {waiting[0] if waiting else '-'}",
        flush=True,
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: http.post(f"/api/v1/models/{n}/abort"), names))
        for name in names:
            wait_phase(http, f"/api/v1/models/{name}", timeout=120, poll=0.5)
        list(pool.map(lambda n: http.delete(f"/api/v1/models/{n}"), names))
    return accepted, max(max_running, max_ray), finished


def main() -> int:
    if not NPZ.exists():
        print(f"missing {NPZ} (set KDIGITS_MNIST_NPZ)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kdbench-") as tmp:
        root = Path(tmp)
        train = write_digits(root / "data")
        print("starting a local Ray head and kdigits serve...", flush=True)
        with local_ray_head(num_cpus=2) as head:
            process, url = start_serve(root / "home", head.dashboard_url, root / "data")
            ray = RayBackend(head.dashboard_url)
            try:
                http = httpx.Client(base_url=url, timeout=120)
                body = {
                    "metadata": {"name": "digits"},
                    "spec": {
                        "source": {"folder": {"train": str(train)}},
                        "image": {"channels": 1, "width": 28, "height": 28},
                    },
                }
                assert http.post("/api/v1/datasets", json=body).status_code == 201
                ds = wait_phase(http, "/api/v1/datasets/digits", poll=0.2)
                assert ds["status"]["phase"] == "Succeeded", ds["status"]
                print(f"dataset: {ds['status']['images']}", flush=True)
                o = measure_overhead(http, ray)
                print(
                    f"1-epoch LeNet: POST->Succeeded {o['wall_s']:.2f}s, Ray job "
                    f"{o['job_s']:.2f}s; overhead {o['overhead_s']:.2f}s = submit "
                    f"{o['submit_s']:.2f}s + notice {o['notice_s']:.2f}s",
                    flush=True,
                )
                accepted, max_running, _ = flood(http, ray)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    print(
        f"RESULT overhead_s={o['overhead_s']:.2f} submitted={accepted} "
        f"max_running={max_running} limit={LIMIT}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
