"""The job queue's arithmetic: what a job needs, what is free, and why a job has to wait.

Order: higher `spec.priority` first, then older first. The limit on concurrent jobs is strict
(no job starts while every slot is taken); a job that needs more GPUs or CPUs than are free lets
smaller jobs behind it start (backfill). Limits come from settings, and for GPUs and CPUs default
to what the Ray cluster has in total.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.specs import Dataset, Model, Resource

DATASET_CPUS = 1.0  # a dataset build decodes images in its entrypoint process


@dataclass(frozen=True)
class Demand:
    cpus: float = 0.0
    gpus: float = 0.0


def demand(obj: Resource) -> Demand:
    if isinstance(obj, Model):
        res = obj.spec.resources
        return Demand(
            cpus=res.workers * res.cpus_per_worker, gpus=res.workers * res.gpus_per_worker
        )
    if isinstance(obj, Dataset):
        return Demand(cpus=DATASET_CPUS)
    return Demand()


def order_key(obj: Resource) -> tuple:
    created = obj.metadata.creation_timestamp
    return (
        -getattr(obj.spec, "priority", 0),  # type: ignore[attr-defined]
        created.timestamp() if created else 0.0,
        obj.metadata.namespace,
        obj.metadata.name,
    )


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass
class Capacity:
    max_jobs: int
    max_gpus: float | None = None
    max_cpus: float | None = None
    running: int = 0
    gpus: float = 0.0
    cpus: float = 0.0

    def add(self, need: Demand) -> None:
        self.running += 1
        self.gpus += need.gpus
        self.cpus += need.cpus

    def blocked_by(self, need: Demand) -> str | None:
        """Why a job with this demand cannot start now; None when it can."""
        if self.running >= self.max_jobs:
            return f"a free job slot ({self.running} of {self.max_jobs} running)"
        if need.gpus > 0:
            if self.max_gpus is None or need.gpus > self.max_gpus:
                have = _fmt(self.max_gpus or 0)
                return f"{_fmt(need.gpus)} GPUs (the cluster allows {have})"
            if self.gpus + need.gpus > self.max_gpus:
                free = _fmt(max(0.0, self.max_gpus - self.gpus))
                return f"{_fmt(need.gpus)} GPUs ({free} of {_fmt(self.max_gpus)} free)"
        if self.max_cpus is not None and need.cpus > 0:
            if need.cpus > self.max_cpus:
                return f"{_fmt(need.cpus)} CPUs (the cluster allows {_fmt(self.max_cpus)})"
            if self.running and self.cpus + need.cpus > self.max_cpus:
                free = _fmt(max(0.0, self.max_cpus - self.cpus))
                return f"{_fmt(need.cpus)} CPUs ({free} of {_fmt(self.max_cpus)} free)"
        return None
