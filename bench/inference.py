"""Benchmark: classify-many and classify-one through kdigits' inference path vs plain torch.

Run from the repository root with no arguments: `python bench/inference.py`. It trains DIGITS'
LeNet (jobs.networks) in-process for one epoch on 8,000 of the 10,000 digits in
`../shared/data/mnist10k.npz` (`--mnist` to override), saves it as a snapshot in a local object
store exactly as the training job does (jobs.snapshots), and writes all 10,000 digits as PNG
files with a DIGITS image list (`path label` per line).

- classify-many, the product path: `jobs.evaluation.parse_image_list` + `classify_entries` +
  the JSON answer (path confinement, reading each file, safe decode, DIGITS resize, batched
  mean subtraction and forward pass, top-5 per image, accuracy and confusion matrix).
- the reference: a plain in-process torch forward pass over the same 10,000 digits, already
  decoded into one uint8 array (mean subtraction, LeNet, softmax, batches of 256).
  Each is run three times, alternating, and the fastest run of each is kept.
- classify-one latency through REST: the controller's FastAPI app served by uvicorn in a
  separate process on loopback (the same app `kdigits serve` runs, without its Ray head and
  reconciler, which a classify request does not touch), the model recorded as a Succeeded Model
  in its job store with the snapshot in its object store; an httpx client (keep-alive) posts one
  PNG as `image_file` to `POST /api/v1/models/bench/classify` and reads the top-5 answer, 300
  times after 30 warm-up requests (the model stays warm in the app's ModelCache); p50/p99 of
  the round trip.

Last line: `RESULT images_per_s=... reference_images_per_s=... ratio=... p50_ms=... p99_ms=...`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jobs import layout  # noqa: E402
from jobs.evaluation import classify_entries, parse_image_list  # noqa: E402
from jobs.inference import load_model  # noqa: E402
from jobs.networks import build_network  # noqa: E402
from jobs.shards import encode_image  # noqa: E402
from jobs.snapshots import NetworkInfo, encode_snapshot, put_snapshot  # noqa: E402
from jobs.specs import DatasetSpec, MeanSubtraction, NetworkSpec  # noqa: E402
from jobs.storage import LocalStore  # noqa: E402

DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist10k.npz"
TRAIN_COUNT = 8000
BATCH = 256
LATENCY_REQUESTS = 300
WARM_REQUESTS = 30
MODEL_NAME = "bench"
ROUNDS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="the 10k-digit npz")
    parser.add_argument("--threads", type=int, default=2, help="image reading threads")
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)  # child mode
    return parser.parse_args()


def train(images: np.ndarray, labels: np.ndarray) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """LeNet, one epoch of SGD on a random 8,000 digits; returns weights and the mean [H,W,1]."""
    torch.manual_seed(0)
    order = np.random.default_rng(0).permutation(len(images))[:TRAIN_COUNT]
    x = torch.from_numpy(images[order]).float()[:, None]
    y = torch.from_numpy(labels[order].astype(np.int64))
    mean = x.mean(dim=0)
    model = build_network(NetworkSpec(standard="lenet"), 1, 28, 28, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for start in range(0, TRAIN_COUNT, 64):
        loss = torch.nn.functional.cross_entropy(
            model(x[start : start + 64] - mean), y[start : start + 64]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return weights, mean.numpy().transpose(1, 2, 0).copy()


def save_snapshot(
    store: LocalStore, weights: dict[str, torch.Tensor], mean: np.ndarray, model_id: str
) -> str:
    info = NetworkInfo(
        network=NetworkSpec(standard="lenet"),
        channels=1, height=28, width=28, image_height=28, image_width=28, classes=10,
        labels=[str(d) for d in range(10)], mean_subtraction=MeanSubtraction.IMAGE,
        epoch=1, model_id=model_id, dataset_id="mnist",
    )  # fmt: skip
    prefix = layout.snapshot_prefix(model_id, 1)
    put_snapshot(store, prefix, encode_snapshot(weights, info, {"epoch": 1}, mean))
    dataset = DatasetSpec.model_validate(
        {"source": {"folder": {"train": "/data"}}, "image": {"channels": 1, "width": 28,
                                                            "height": 28}}
    )  # fmt: skip
    store.put_bytes("datasets/mnist/spec.json", dataset.model_dump_json(by_alias=True).encode())
    return prefix


def write_images(folder: Path, images: np.ndarray, labels: np.ndarray) -> str:
    """All digits as PNG files; returns the DIGITS image list (relative paths, labels)."""
    lines = []
    for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        name = f"{int(label)}/{index:05d}.png"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(pixels[:, :, None], "png"))
        lines.append(f"{name} {int(label)}\n")
    return "".join(lines)


def reference_rate(
    weights: dict[str, torch.Tensor], mean: np.ndarray, images: np.ndarray
) -> tuple[float, np.ndarray]:
    """Plain torch: the forward pass over the decoded digits, batched, with softmax."""
    model = build_network(NetworkSpec(standard="lenet"), 1, 28, 28, 10)
    model.load_state_dict(weights)
    model.eval()
    pixels = torch.from_numpy(images)[:, None]
    mean_t = torch.from_numpy(mean.transpose(2, 0, 1).copy())
    out = []
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(pixels), BATCH):
            logits = model(pixels[first : first + BATCH].float() - mean_t)
            out.append(torch.softmax(logits, dim=1))
    elapsed = time.perf_counter() - start
    return len(images) / elapsed, torch.cat(out).argmax(1).numpy()


def product_rate(
    model: object, text: str, folder: Path, threads: int
) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    entries = parse_image_list(text, [folder], folder=str(folder), classes=10)
    answer = classify_entries(model, entries, threads=threads).to_json()  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    return len(entries) / elapsed, answer


def server_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "KDIGITS_HOME": str(home),
        "KDIGITS_RAY_ADDRESS": "http://127.0.0.1:9",  # never called: no reconciler, no lists
        "KDIGITS_DATA_ROOTS": str(home),
        "KDIGITS_TOKEN": "",
        "PYTHONPATH": str(REPO),
    }


def register_model(home: Path) -> str:
    """A Succeeded Model `bench` in the job store that `kdigits serve` would use; its uid."""
    from controller.settings import Settings
    from controller.store import SQLiteStore
    from jobs.specs import Model, ModelSpec, ObjectMeta, Phase

    store = SQLiteStore(Settings(home=home).database)
    try:
        spec = ModelSpec.model_validate({"dataset": "mnist", "network": {"standard": "lenet"}})
        model = store.create(Model(metadata=ObjectMeta(name=MODEL_NAME), spec=spec))
        model.status.phase = Phase.SUCCEEDED
        store.update_status(model)
        return str(model.metadata.uid)
    finally:
        store.close()


def serve(port: int) -> int:
    """Child mode: the controller's REST app under uvicorn on loopback."""
    import uvicorn

    from controller.api.main import create_app

    uvicorn.run(create_app(run_reconciler=False), host="127.0.0.1", port=port, log_level="warning")
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rest_latency(home: Path, image: bytes) -> list[float]:
    """Round trips of POST /api/v1/models/bench/classify against a uvicorn child process."""
    port = free_port()
    log = (home / "serve.log").open("wb")
    child = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve", str(port)],
        env=server_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
            deadline = time.monotonic() + 60
            while True:
                if child.poll() is not None:
                    raise RuntimeError(f"server exited: {(home / 'serve.log').read_text()}")
                try:
                    if http.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the REST server did not start")
                time.sleep(0.2)
            path = f"/api/v1/models/{MODEL_NAME}/classify"
            files = {"image_file": ("digit.png", image, "image/png")}
            timings = []
            for index in range(WARM_REQUESTS + LATENCY_REQUESTS):
                start = time.perf_counter()
                response = http.post(path, files=files, data={"top_k": "5"})
                elapsed = (time.perf_counter() - start) * 1000
                response.raise_for_status()
                assert len(response.json()["predictions"]) == 5
                if index >= WARM_REQUESTS:
                    timings.append(elapsed)
            return timings
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def main() -> int:
    args = parse_args()
    if args.serve:
        return serve(args.serve)
    with np.load(args.mnist) as data:
        images, labels = data["images"], data["labels"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {len(images)} digits")
    work = Path(tempfile.mkdtemp(prefix="kdigits-bench-inference-"))
    try:
        started = time.perf_counter()
        weights, mean = train(images, labels)
        print(
            f"trained LeNet for one epoch on {TRAIN_COUNT} digits in "
            f"{time.perf_counter() - started:.1f}s"
        )
        home = work / "home"
        home.mkdir()
        model_id = register_model(home)
        store = LocalStore(home / "store")
        prefix = save_snapshot(store, weights, mean, model_id)
        folder = work / "images"
        text = write_images(folder, images, labels)
        model = load_model(store, prefix, device="cpu")
        product_rate(model, text[: text.index("\n", 20_000) + 1], folder, args.threads)  # warm

        products, references = [], []
        answer: dict[str, object] = {}
        reference_top1 = np.zeros(0)
        for _ in range(ROUNDS):
            rate, reference_top1 = reference_rate(weights, mean, images)
            references.append(rate)
            rate, answer = product_rate(model, text, folder, args.threads)
            products.append(rate)
        classifications = answer["classifications"]
        assert isinstance(classifications, dict)
        product_top1 = np.array([int(v[0][0]) for v in classifications.values()])
        agree = float((product_top1 == reference_top1).mean())
        print(
            f"classify-many: {answer['count']} images, top-1 accuracy "
            f"{answer['top1Accuracy']:.4f}, top-1 agreement with the reference {agree:.4f}"
        )
        print(
            f"  product path (files -> JSON answer): {', '.join(f'{r:.0f}' for r in products)} "
            "images/s"
        )
        print(
            f"  reference (forward on decoded uint8): "
            f"{', '.join(f'{r:.0f}' for r in references)} images/s"
        )

        png = (folder / text.split(" ", 1)[0]).read_bytes()
        timings = rest_latency(home, png)
        p50, p99 = np.percentile(timings, 50), np.percentile(timings, 99)
        print(
            f"classify-one through REST (uvicorn on loopback, model warm): {LATENCY_REQUESTS} "
            f"requests, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )
        best, reference = max(products), max(references)
        print(
            f"RESULT images_per_s={best:.0f} reference_images_per_s={reference:.0f} "
            f"ratio={best / reference:.2f} p50_ms={p50:.2f} p99_ms={p99:.2f}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
