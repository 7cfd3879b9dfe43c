"""Shared helpers for the dataset tests: real image files, hostile files, and job submission.

The hostile files are the ones issue 2 lists (zero-size, a text file named .png, a truncated
PNG, a PNG header claiming 30000x30000 pixels); builds are submitted through the real Ray
Jobs API with the same entrypoint the controller uses.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from ray.job_submission import JobStatus, JobSubmissionClient

from jobs.events import Event, parse_lines
from jobs.storage import ObjectStore

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 180.0


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(pixels))
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small, valid-looking PNG whose header claims width x height 8-bit gray pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\0" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def truncated_png(pixels: np.ndarray) -> bytes:
    data = png_bytes(pixels)
    return data[: len(data) // 2]


HOSTILE_REASONS = {
    "empty.png": "empty file",
    "text.png": "not an image",
    "truncated.png": "truncated",
    "bomb.png": "too many pixels (decompression bomb)",
}


def write_hostile_files(folder: Path, sample: np.ndarray) -> dict[str, str]:
    """Writes the hostile files into `folder`; returns {file name: expected skip reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("this is a text file, not a picture\n" * 20)
    (folder / "truncated.png").write_bytes(truncated_png(sample))
    (folder / "bomb.png").write_bytes(bomb_png())
    return dict(HOSTILE_REASONS)


def write_digit_classes(
    root: Path, images: np.ndarray, labels: np.ndarray, per_class: dict[int, int]
) -> dict[int, list[np.ndarray]]:
    """`root/<digit>/<i>.png` for the first `n` digits of each class; returns what was written."""
    written: dict[int, list[np.ndarray]] = {}
    for digit, count in per_class.items():
        picked = images[labels == digit][:count]
        for i, pixels in enumerate(picked):
            write_png(root / str(digit) / f"{i:04d}.png", pixels)
        written[digit] = list(picked)
    return written


def put_spec(store: ObjectStore, dataset_id: str, spec: dict[str, object]) -> None:
    store.put_bytes(f"datasets/{dataset_id}/spec.json", json.dumps(spec).encode())


def build_entrypoint(store_url: str, dataset_id: str, roots: list[Path], *extra: str) -> str:
    joined = ":".join(str(root) for root in roots)
    return " ".join(
        [
            sys.executable,
            "-m",
            "jobs.build_dataset",
            f"--store {store_url}",
            f"--dataset-id {dataset_id}",
            f"--data-roots {joined}",
            *extra,
        ]
    )


def submit_build(
    dashboard_url: str,
    store_url: str,
    dataset_id: str,
    roots: list[Path],
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[JobSubmissionClient, str]:
    client = JobSubmissionClient(dashboard_url)
    job = client.submit_job(
        entrypoint=build_entrypoint(store_url, dataset_id, roots, *extra),
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **(env or {})}},
    )
    return client, job


def wait_job(client: JobSubmissionClient, job: str, timeout: float = JOB_TIMEOUT_S) -> JobStatus:
    deadline = time.monotonic() + timeout
    status = client.get_job_status(job)
    while not status.is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job)
            raise TimeoutError(f"job {job} still {status} after {timeout:.0f}s")
        time.sleep(0.25)
        status = client.get_job_status(job)
    return status


def run_build(
    dashboard_url: str,
    store_url: str,
    dataset_id: str,
    roots: list[Path],
    *extra: str,
    env: dict[str, str] | None = None,
) -> tuple[JobStatus, str, list[Event]]:
    """Submit, wait, and return the final status, the job's logs and its event lines."""
    client, job = submit_build(dashboard_url, store_url, dataset_id, roots, *extra, env=env)
    status = wait_job(client, job)
    logs = client.get_job_logs(job)
    return status, logs, list(parse_lines(logs.splitlines()))
