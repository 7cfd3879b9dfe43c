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
- classify-one latency: one PNG in, top-5 out, with the model warm, 300 requests, p50/p99.
  Through REST (`POST /api/v1/models/{name}/classify`) when the controller serves that route;
  otherwise through `LoadedModel.classify_one` (the function the route calls), said in the
  output.

Last line: `RESULT images_per_s=... reference_images_per_s=... ratio=... p50_ms=... p99_ms=...`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

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
ROUNDS = 3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="the 10k-digit npz")
    parser.add_argument("--threads", type=int, default=2, help="image reading threads")
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


def save_snapshot(store: LocalStore, weights: dict[str, torch.Tensor], mean: np.ndarray) -> str:
    info = NetworkInfo(
        network=NetworkSpec(standard="lenet"),
        channels=1, height=28, width=28, image_height=28, image_width=28, classes=10,
        labels=[str(d) for d in range(10)], mean_subtraction=MeanSubtraction.IMAGE,
        epoch=1, model_id="bench", dataset_id="mnist",
    )  # fmt: skip
    prefix = layout.snapshot_prefix("bench", 1)
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


def rest_route_exists() -> bool:
    routes = REPO / "controller" / "api" / "routes"
    return any("/classify" in p.read_text() for p in routes.glob("*.py"))


def latency(model: object, image: bytes) -> list[float]:
    timings = []
    for _ in range(LATENCY_REQUESTS):
        start = time.perf_counter()
        model.classify_one(image, top_k=5)  # type: ignore[attr-defined]
        timings.append((time.perf_counter() - start) * 1000)
    return timings


def main() -> int:
    args = parse_args()
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
        store = LocalStore(work / "store")
        prefix = save_snapshot(store, weights, mean)
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
        latency(model, png)[:20]  # warm
        if rest_route_exists():
            print(
                "classify-one: the controller has a /classify route, but this benchmark "
                "does not drive it yet; measured through LoadedModel.classify_one"
            )
        else:
            print(
                "classify-one: no REST /classify route in controller/api/routes yet; measured "
                "through LoadedModel.classify_one (what the route will call), model warm"
            )
        timings = latency(model, png)
        p50, p99 = np.percentile(timings, 50), np.percentile(timings, 99)
        print(f"  {LATENCY_REQUESTS} requests: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
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
