"""`--wait`: follow a job until it ends, with a tqdm bar showing epoch, loss, accuracy, ETA."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

from controller.client import ApiClient

TERMINAL = {"Succeeded", "Failed", "Aborted"}


def _postfix(obj: dict[str, Any]) -> str:
    status = obj.get("status") or {}
    phase = status.get("phase", "Pending")
    parts = [phase]
    if obj.get("kind") == "Model" and phase == "Running":
        metrics = status.get("metrics") or {}
        parts.append(f"epoch {status.get('epoch', 0):g}")
        for key, label in (("trainLoss", "loss"), ("valLoss", "val loss")):
            if key in metrics:
                parts.append(f"{label} {metrics[key]:.4f}")
        for key, label in (("valAccuracy", "val acc"), ("trainAccuracy", "acc")):
            if key in metrics:
                parts.append(f"{label} {_percent(metrics[key])}")
                break
    if phase == "Queued" and status.get("waitingFor"):
        parts.append(f"waiting for {status['waitingFor']}")
    eta = status.get("eta")
    if phase == "Running" and isinstance(eta, int | float):
        parts.append(f"ETA {_duration(eta)}")
    return ", ".join(parts)


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%" if value <= 1 else f"{value:.2f}%"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def wait(
    client: ApiClient,
    plural: str,
    name: str,
    interval: float = 1.0,
    show: bool = True,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Poll until the object is Succeeded, Failed or Aborted; returns the last object."""
    deadline = time.monotonic() + timeout if timeout else None
    bar = tqdm(
        total=100,
        desc=name,
        unit="%",
        bar_format="{percentage:3.0f}%|{bar:24}| {desc} [{elapsed}]",
        file=sys.stderr,
        disable=not show,
        dynamic_ncols=True,
    )
    try:
        while True:
            obj = client.get(plural, name)
            status = obj.get("status") or {}
            done = round(float(status.get("progress") or 0) * 100, 1)
            bar.n = done
            bar.set_description_str(f"{name}: {_postfix(obj)}", refresh=False)
            bar.refresh()
            if status.get("phase") in TERMINAL:
                return obj
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not finish in {timeout:.0f}s")
            time.sleep(interval)
    finally:
        bar.close()
