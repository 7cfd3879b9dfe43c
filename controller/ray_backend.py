"""The Ray Jobs API, as the reconciler uses it: submit, status, stop, delete, logs, resources.

One Ray submission per job attempt with the deterministic id `kdigits-<kind>-<uid>-<attempt>`:
submitting an id that already exists re-attaches to that job instead of failing, so a controller
that restarted (or crashed between recording an attempt and submitting it) never runs a job
twice. Logs are read incrementally by character offset.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def submission_id(kind: str, uid: str, attempt: int) -> str:
    return f"kdigits-{kind.lower()}-{uid}-{attempt}"


class RayUnavailable(RuntimeError):
    """The Ray Jobs API did not answer."""


@dataclass
class JobInfo:
    submission_id: str
    status: str  # PENDING RUNNING STOPPED SUCCEEDED FAILED
    message: str = ""
    start_time: float | None = None  # Unix seconds
    end_time: float | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass
class Resources:
    total: dict[str, float]
    available: dict[str, float]


def _not_found(error: Exception) -> bool:
    text = str(error)
    return "404" in text or "does not exist" in text or "not found" in text.lower()


class RayBackend:
    def __init__(self, address: str, job_env: dict[str, str] | None = None) -> None:
        self.address = address.rstrip("/")
        self.job_env = dict(job_env or {})
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from ray.job_submission import JobSubmissionClient

                try:
                    self._client = JobSubmissionClient(self.address)
                except Exception as error:  # noqa: BLE001 - connection errors vary
                    raise RayUnavailable(f"Ray Jobs API at {self.address}: {error}") from error
            return self._client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(*args, **kwargs)
        except RuntimeError as error:
            if _not_found(error):
                raise LookupError(str(error)) from error
            raise
        except OSError as error:  # requests' ConnectionError is an OSError
            raise RayUnavailable(f"Ray Jobs API at {self.address}: {error}") from error

    def submit(
        self,
        sid: str,
        entrypoint: str,
        env: dict[str, str] | None = None,
        num_cpus: float = 0,
        num_gpus: float = 0,
        metadata: dict[str, str] | None = None,
    ) -> bool:
        """Submit once; True if submitted now, False if the id existed (re-attached)."""
        if self.info(sid) is not None:
            return False
        runtime_env = {"env_vars": {**self.job_env, **(env or {})}}
        try:
            self._call(
                "submit_job",
                entrypoint=entrypoint,
                submission_id=sid,
                runtime_env=runtime_env,
                metadata=metadata or {},
                entrypoint_num_cpus=num_cpus or None,
                entrypoint_num_gpus=num_gpus or None,
            )
        except RuntimeError as error:
            if "already exists" in str(error) or self.info(sid) is not None:
                log.info("re-attached to existing Ray job %s", sid)
                return False
            raise
        return True

    def info(self, sid: str) -> JobInfo | None:
        try:
            details = self._call("get_job_info", sid)
        except LookupError:
            return None
        status = getattr(details.status, "value", details.status)
        return JobInfo(
            submission_id=sid,
            status=str(status),
            message=details.message or "",
            start_time=details.start_time / 1000 if details.start_time else None,
            end_time=details.end_time / 1000 if details.end_time else None,
            metadata=dict(details.metadata or {}),
        )

    def stop(self, sid: str) -> bool:
        try:
            return bool(self._call("stop_job", sid))
        except LookupError:
            return False

    def delete(self, sid: str) -> None:
        """Forget a finished job (stopping it first if it still runs)."""
        info = self.info(sid)
        if info is None:
            return
        if not info.terminal:
            self.stop(sid)
            return  # deleted on a later pass, once Ray reports it stopped
        with contextlib.suppress(LookupError):
            self._call("delete_job", sid)

    def logs(self, sid: str, offset: int = 0) -> tuple[str, int]:
        """Log text after `offset` characters and the new offset ("" when unknown)."""
        try:
            text = self._call("get_job_logs", sid)
        except LookupError:
            return "", offset
        if len(text) < offset:  # the log was replaced (a re-created job): start over
            offset = 0
        return text[offset:], len(text)

    def list_ids(self, prefix: str = "kdigits-") -> list[str]:
        jobs = self._call("list_jobs")
        return sorted(
            j.submission_id for j in jobs if j.submission_id and j.submission_id.startswith(prefix)
        )

    def resources(self) -> Resources:
        """Total and free resources from the dashboard's cluster status."""
        try:
            response = httpx.get(f"{self.address}/api/cluster_status", timeout=5)
            response.raise_for_status()
            data = response.json().get("data", {})
        except (httpx.HTTPError, ValueError) as error:
            raise RayUnavailable(f"Ray cluster status at {self.address}: {error}") from error
        usage = ((data.get("clusterStatus") or {}).get("loadMetricsReport") or {}).get("usage")
        total: dict[str, float] = {}
        available: dict[str, float] = {}
        for name, pair in (usage or {}).items():
            if name.startswith("node:") or not isinstance(pair, list) or len(pair) != 2:
                continue
            used, whole = float(pair[0]), float(pair[1])
            total[name] = whole
            available[name] = max(0.0, whole - used)
        if "CPU" not in total:  # the autoscaler's first report is not there yet
            total, available = self._node_totals()
        return Resources(total=total, available=available)

    def _node_totals(self) -> tuple[dict[str, float], dict[str, float]]:
        """Fallback while the autoscaler report is not there yet (first seconds of a head)."""
        try:
            response = httpx.get(f"{self.address}/nodes?view=summary", timeout=5)
            response.raise_for_status()
            nodes = response.json()["data"]["summary"]
        except (httpx.HTTPError, ValueError, KeyError) as error:
            raise RayUnavailable(f"Ray nodes at {self.address}: {error}") from error
        total: dict[str, float] = {}
        for node in nodes:
            if node.get("state", "ALIVE") != "ALIVE":
                continue
            for name, value in ((node.get("raylet") or {}).get("resourcesTotal") or {}).items():
                if not name.startswith("node:"):
                    total[name] = total.get(name, 0.0) + float(value)
        return total, dict(total)
