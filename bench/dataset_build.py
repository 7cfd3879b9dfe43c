"""Benchmark: the MNIST folder dataset built through the real Ray job vs single-process PIL.

Run from the repository root with no arguments: `python bench/dataset_build.py`. It writes
the 10,000 digits of `../shared/data/mnist10k.npz` (`--mnist` to override) as a PNG folder
tree (`train/<digit>/*.png`), starts a private local Ray head, and then runs `--rounds`
rounds (default 3) of: a plain single-process PIL decode-and-resize of the same files (the
reference: list, open, convert, resize, to numpy), and a build of the dataset submitted as
`python -m jobs.build_dataset` through the Ray Jobs API exactly as the controller does. The
job's figure is its own, read from `stats.json`: images per second over listing to last shard
written. Ray start-up, job submission and worker start-up are reported separately.

The machine is shared, so one run of either side can be slowed by someone else's work: every
run is printed, and the RESULT compares the best job run with the best reference run (the
same rule on both sides; the rounds interleave them so that both see the same conditions).
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

from controller.ray_local import LocalRayHead, local_ray_head  # noqa: E402
from jobs.mnist import write_phase  # noqa: E402
from jobs.specs import DatasetSpec  # noqa: E402
from jobs.storage import ObjectStore, open_store  # noqa: E402

DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist10k.npz"
JOB_TIMEOUT_S = 600.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
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
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray head CPUs")
    parser.add_argument("--chunk-size", type=int, default=0, help="0: the job's automatic size")
    parser.add_argument("--rounds", type=int, default=3, help="reference + build rounds")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp dir")
    return parser.parse_args()


def list_images(root: Path) -> list[str]:
    paths: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        paths += [os.path.join(folder, name) for name in sorted(files) if name.endswith(".png")]
    return paths


def reference_run(root: Path, width: int, height: int, channels: int) -> tuple[float, float]:
    """Single process: list, decode, convert, resize (when needed) to numpy, every file.

    Returns (images per second, CPU microseconds per image).
    """
    mode = "L" if channels == 1 else "RGB"
    started, cpu_started = time.perf_counter(), time.process_time()
    paths = list_images(root)
    for path in paths:
        with Image.open(path) as opened:
            image: Image.Image = opened
            if image.mode != mode:
                image = image.convert(mode)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            np.asarray(image)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return len(paths) / wall, cpu / len(paths) * 1e6


def write_digits(npz: Path, dest: Path) -> int:
    with np.load(npz, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    return write_phase(dest, "train", images, labels)


def dataset_spec(args: argparse.Namespace, train_dir: Path) -> DatasetSpec:
    width, height = (int(v) for v in args.size.lower().split("x"))
    return DatasetSpec.model_validate(
        {
            "source": {"folder": {"train": str(train_dir)}},
            "image": {
                "channels": args.channels,
                "width": width,
                "height": height,
                "resizeMode": args.resize_mode,
            },
            "encoding": args.encoding,
        }
    )


def build_once(
    head: LocalRayHead, store: ObjectStore, spec: DatasetSpec, work: Path, args: argparse.Namespace
) -> dict[str, float]:
    """Submit one build through the Jobs API, wait, and return its figures."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    dataset_id = f"bench-{time.time_ns()}"
    store.put_bytes(f"datasets/{dataset_id}/spec.json", json.dumps(spec.to_json_dict()).encode())
    client = JobSubmissionClient(head.dashboard_url)
    entrypoint = (
        f"{sys.executable} -m jobs.build_dataset --store {store.url} "
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
    submit_to_done = time.perf_counter() - submitted
    if status != JobStatus.SUCCEEDED:
        raise RuntimeError(f"build job {status}:\n{client.get_job_logs(job)[-4000:]}")
    stats = json.loads(store.get_bytes(f"datasets/{dataset_id}/stats.json"))
    timing = stats["timing"]
    return {
        "submit_to_done_s": submit_to_done,
        "images": float(sum(stats["images"].values())),
        "skipped": float(stats["skipped"]["count"]),
        "tasks": float(stats["chunks"]["tasks"]),
        "chunk_size": float(stats["chunks"]["largest"]),
        "job_total_s": timing["totalSeconds"],
        "ray_init_s": timing["rayInitSeconds"],
        "worker_start_s": timing["workerStartSeconds"],
        "list_s": timing["listSeconds"],
        "process_s": timing["processSeconds"],
        "task_s": timing["taskSeconds"],
        "task_cpu_us": timing["taskCpuSeconds"] / max(1.0, sum(stats["images"].values())) * 1e6,
        "images_per_s": timing["imagesPerSecond"],
    }


def report_build(index: int, run: dict[str, float], cpus: int) -> None:
    busy = run["task_s"] / (run["process_s"] * cpus)
    print(
        f"build {index}: {run['images_per_s']:.0f} images/s ({run['images']:.0f} images, "
        f"{run['skipped']:.0f} skipped, {run['tasks']:.0f} tasks of up to "
        f"{run['chunk_size']:.0f}); listing {run['list_s']:.3f}s, listing to last shard "
        f"{run['process_s']:.3f}s, task time / ({cpus} CPUs x that) {busy:.2f}, "
        f"{run['task_cpu_us']:.0f} CPU us/image in the tasks"
    )
    print(
        f"         overheads outside that: submit to done {run['submit_to_done_s']:.2f}s, "
        f"driver total {run['job_total_s']:.2f}s, ray.init {run['ray_init_s']:.2f}s, "
        f"worker start-up {run['worker_start_s']:.2f}s"
    )


def main() -> int:
    args = parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="kdigits-bench-"))).resolve()
    data_dir = work / "mnist"
    references: list[float] = []
    builds: list[dict[str, float]] = []
    try:
        written = write_digits(args.mnist, data_dir)
        print(f"wrote {written} PNG digits under {data_dir / 'train'}")
        spec = dataset_spec(args, data_dir / "train")
        store = open_store((work / "store").as_uri())
        started = time.perf_counter()
        with local_ray_head(num_cpus=args.cpus) as head:
            print(f"Ray head ({args.cpus} CPUs) started in {time.perf_counter() - started:.2f}s")
            for index in range(1, args.rounds + 1):
                ref, ref_cpu = reference_run(data_dir / "train", width, height, args.channels)
                references.append(ref)
                load = os.getloadavg()[0]
                print(
                    f"reference {index}: {ref:.0f} images/s, {ref_cpu:.0f} CPU us/image "
                    f"(load average {load:.1f})"
                )
                builds.append(build_once(head, store, spec, work, args))
                report_build(index, builds[-1], args.cpus)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    best = max(run["images_per_s"] for run in builds)
    reference = max(references)
    rates = sorted(run["images_per_s"] for run in builds)
    median_ratio = rates[len(rates) // 2] / sorted(references)[len(references) // 2]
    print(
        f"median build / median reference: {median_ratio:.2f}; machine load average now "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"RESULT images_per_s={best:.0f} reference_images_per_s={reference:.0f} "
        f"ratio={best / reference:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
