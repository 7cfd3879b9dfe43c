"""Benchmark: the MNIST folder dataset built through the real Ray job vs single-process PIL.

Run from the repository root with no arguments: `python bench/dataset_build.py`. It writes
the 10,000 digits of `../shared/data/mnist10k.npz` (`--mnist` to override) as a PNG folder
tree (`train/<digit>/*.png`), measures a plain single-process PIL decode-and-resize of the same
files (the reference: list, open, convert, resize, to numpy), starts a private local Ray head,
submits `python -m jobs.build_dataset` through the Ray Jobs API exactly as the controller does,
and reads the job's own timing from `stats.json`: images per second over listing-to-last-shard.
Ray start-up, job submission and worker start-up are reported separately. The reference is
measured before and after the build and the faster run is used (the conservative choice).

Last line: `RESULT images_per_s=... reference_images_per_s=... ratio=...`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controller.ray_local import local_ray_head  # noqa: E402
from jobs.mnist import write_phase  # noqa: E402
from jobs.specs import DatasetSpec  # noqa: E402
from jobs.storage import open_store  # noqa: E402

DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist10k.npz"
JOB_TIMEOUT_S = 600.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="the 10k-digit npz")
    parser.add_argument("--size", default="28x28", help="stored image size WxH (default 28x28)")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3), help="default 1")
    parser.add_argument(
        "--resize-mode", default="squash", choices=("squash", "crop", "fill", "half_crop")
    )
    parser.add_argument(
        "--encoding",
        default="none",
        choices=("none", "png", "jpg"),
        help="shard encoding (default none: raw pixels, no re-encoding, like the reference)",
    )
    parser.add_argument(
        "--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the Ray head"
    )
    parser.add_argument("--chunk-size", type=int, default=0, help="0: the job's automatic size")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    return parser.parse_args()


def list_images(root: Path) -> list[str]:
    paths: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        paths += [os.path.join(folder, name) for name in sorted(files) if name.endswith(".png")]
    return paths


def reference_images_per_s(root: Path, width: int, height: int, channels: int) -> float:
    """Single process: list, decode, convert, resize (when needed) to numpy, every file."""
    mode = "L" if channels == 1 else "RGB"
    started = time.perf_counter()
    paths = list_images(root)
    for path in paths:
        with Image.open(path) as opened:
            image: Image.Image = opened
            if image.mode != mode:
                image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            np.asarray(image)
    return len(paths) / (time.perf_counter() - started)


def write_digits(npz: Path, dest: Path) -> int:
    with np.load(npz, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    return write_phase(dest, "train", images, labels)


def run_job(args: argparse.Namespace, work: Path, data_dir: Path) -> dict[str, float]:
    from ray.job_submission import JobStatus, JobSubmissionClient

    width, height = (int(v) for v in args.size.lower().split("x"))
    store_url = (work / "store").as_uri()
    store = open_store(store_url)
    dataset_id = f"bench-{int(time.time())}"
    spec = DatasetSpec.model_validate(
        {
            "source": {"folder": {"train": str(data_dir / "train")}},
            "image": {
                "channels": args.channels,
                "width": width,
                "height": height,
                "resizeMode": args.resize_mode,
            },
            "encoding": args.encoding,
        }
    )
    store.put_bytes(f"datasets/{dataset_id}/spec.json", json.dumps(spec.to_json_dict()).encode())
    figures: dict[str, float] = {}
    started = time.perf_counter()
    with local_ray_head(num_cpus=args.cpus) as head:
        figures["ray_start_s"] = time.perf_counter() - started
        client = JobSubmissionClient(head.dashboard_url)
        entrypoint = (
            f"{sys.executable} -m jobs.build_dataset --store {store_url} "
            f"--dataset-id {dataset_id} --data-roots {work} --chunk-size {args.chunk_size}"
        )
        submitted = time.perf_counter()
        job = client.submit_job(
            entrypoint=entrypoint, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}}
        )
        status = client.get_job_status(job)
        while not status.is_terminal():
            if time.perf_counter() - submitted > JOB_TIMEOUT_S:
                client.stop_job(job)
                raise TimeoutError(f"the build job did not finish in {JOB_TIMEOUT_S:.0f}s")
            time.sleep(0.25)
            status = client.get_job_status(job)
        figures["submit_to_done_s"] = time.perf_counter() - submitted
        if status != JobStatus.SUCCEEDED:
            raise RuntimeError(f"build job {status}:\n{client.get_job_logs(job)[-4000:]}")
    stats = json.loads(store.get_bytes(f"datasets/{dataset_id}/stats.json"))
    timing = stats["timing"]
    figures.update(
        images=float(sum(stats["images"].values())),
        skipped=float(stats["skipped"]["count"]),
        tasks=float(stats["chunks"]["tasks"]),
        chunk_size=float(stats["chunks"]["largest"]),
        job_total_s=timing["totalSeconds"],
        worker_start_s=timing["workerStartSeconds"],
        list_s=timing["listSeconds"],
        process_s=timing["processSeconds"],
        task_cpu_s=timing["taskSeconds"],
        images_per_s=timing["imagesPerSecond"],
    )
    return figures


def main() -> int:
    args = parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="kdigits-bench-"))
    work = work.resolve()
    data_dir = work / "mnist"
    try:
        written = write_digits(args.mnist, data_dir)
        print(f"wrote {written} PNG digits under {data_dir / 'train'}")
        refs = [reference_images_per_s(data_dir / "train", width, height, args.channels)]
        refs.append(reference_images_per_s(data_dir / "train", width, height, args.channels))
        figures = run_job(args, work, data_dir)
        refs.append(reference_images_per_s(data_dir / "train", width, height, args.channels))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    reference = max(refs)
    print(f"reference runs (images/s): {', '.join(f'{r:.0f}' for r in refs)}")
    print(
        f"Ray head start {figures['ray_start_s']:.2f}s; submit to done "
        f"{figures['submit_to_done_s']:.2f}s; driver total {figures['job_total_s']:.2f}s, of "
        f"which worker start-up {figures['worker_start_s']:.2f}s"
    )
    busy = figures["task_cpu_s"] / (figures["process_s"] * args.cpus)
    print(
        f"job: {figures['images']:.0f} images ({figures['skipped']:.0f} skipped) in "
        f"{figures['tasks']:.0f} tasks of up to {figures['chunk_size']:.0f}; listing "
        f"{figures['list_s']:.3f}s; listing to last shard {figures['process_s']:.3f}s; "
        f"task time / ({args.cpus} CPUs x wall) = {busy:.2f}"
    )
    ratio = figures["images_per_s"] / reference
    print(
        f"RESULT images_per_s={figures['images_per_s']:.0f} "
        f"reference_images_per_s={reference:.0f} ratio={ratio:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
