"""Start and stop a private local Ray head: the embedded default's cluster.

`kdigits serve`, `kdigits demo`, the tests and the benchmarks all get their local Ray head
here. Each head has its own ports and temp dir, so several can run side by side, and it is
stopped by ending its own process group, never by `ray stop` (which would kill every Ray on
the machine). No orphaned processes: the head is a child of `ray start --block`, and the whole
group is terminated on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

RAY_START_TIMEOUT_S = 90.0


def _ray_command() -> list[str]:
    """The `ray` CLI of this interpreter: the script beside it, or the module when Ray was put
    on PYTHONPATH without its console scripts (a pre-built image, a `pip install --target`)."""
    script = Path(sys.executable).with_name("ray")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_port_range(size: int) -> int:
    """A start port with `size` consecutive ports free (best effort)."""
    for _ in range(200):
        start = free_port()
        if start + size >= 65000:
            continue
        ok = True
        for port in range(start, start + size):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start
    raise RuntimeError("no free port range for Ray workers")


@dataclass
class LocalRayHead:
    """A running Ray head on 127.0.0.1 with the Jobs API at `dashboard_url`."""

    num_cpus: int | None = None
    num_gpus: int | None = None
    process: subprocess.Popen[bytes] | None = None
    temp_dir: Path | None = None
    gcs_port: int = 0
    dashboard_port: int = 0
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    adopted_pgid: int | None = None  # a head started by an earlier process (see `adopt`)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = RAY_START_TIMEOUT_S) -> LocalRayHead:
        ray_command = _ray_command()
        # A short path: Ray puts Unix sockets under it and their paths are length-limited.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="kdray-", dir="/tmp"))
        worker_start = _free_port_range(100)
        # Every named port outside the worker range and distinct: Ray refuses overlaps.
        taken = set(range(worker_start, worker_start + 100))
        ports: list[int] = []
        while len(ports) < 9:
            port = free_port()
            if port not in taken:
                taken.add(port)
                ports.append(port)
        self.gcs_port, self.dashboard_port = ports[0], ports[1]
        free = iter(ports[2:])
        args = [
            *ray_command,
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={next(free)}",
            f"--node-manager-port={next(free)}",
            f"--object-manager-port={next(free)}",
            f"--dashboard-agent-listen-port={next(free)}",
            f"--dashboard-agent-grpc-port={next(free)}",
            f"--runtime-env-agent-port={next(free)}",
            f"--metrics-export-port={next(free)}",
            f"--min-worker-port={worker_start}",
            f"--max-worker-port={worker_start + 99}",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ]
        if self.num_cpus is not None:
            args.append(f"--num-cpus={self.num_cpus}")
        if self.num_gpus is not None:
            args.append(f"--num-gpus={self.num_gpus}")
        env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            # Ray >= 2.5x drains a node on SIGTERM, waiting (30 s by default) for leases that
            # a private head's finished jobs may never return: nothing to drain here.
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            # Ray >= 2.5x turns token auth on for `ray start` as soon as ~/.ray/auth_token
            # exists (any local `ray.init()` writes one), and then the readiness probe and every
            # client without the token get 401. This head listens on loopback only and its
            # behaviour must not depend on what else ran in the home directory.
            "RAY_AUTH_MODE": "disabled",
            **self.env,
        }
        env.pop("RAY_ADDRESS", None)
        self.log_path = self.temp_dir / "ray-start.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_ready(timeout)
        except Exception:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.dashboard_url}/api/version"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = self.log_path.read_text(errors="replace") if self.log_path else ""
                raise RuntimeError(f"ray start exited with {self.process.returncode}:\n{log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"Ray head did not answer at {url} within {timeout:.0f}s")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the head: SIGTERM to `ray start --block` alone, which then stops its children
        in a few seconds (signalling the whole group at once leaves it waiting on children
        that are already gone, for tens of seconds); whatever is left is killed."""
        process, self.process = self.process, None
        pgid, self.adopted_pgid = self.adopted_pgid, None
        if process is None and pgid is not None:
            _stop_group(pgid, timeout)
            self._kill_session_leftovers()
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # stragglers still in the group
            self._kill_session_leftovers()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def _kill_session_leftovers(self) -> None:
        """Ray processes that left the group but still point at our temp dir."""
        if self.temp_dir is None:
            return
        marker = str(self.temp_dir)
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(proc.name), signal.SIGKILL)

    # -------------------------------------------------------------- surviving a crash

    def save(self, path: Path) -> None:
        """Record this head so a controller restarted after a crash can adopt it."""
        pid = self.process.pid if self.process is not None else self.adopted_pgid
        record = {
            "pgid": pid,
            "gcs_port": self.gcs_port,
            "dashboard_port": self.dashboard_port,
            "temp_dir": str(self.temp_dir),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    @classmethod
    def adopt(cls, path: Path, timeout: float = 10.0) -> LocalRayHead | None:
        """The head recorded at `path` if it still runs and answers, else None.

        A controller killed with SIGKILL cannot stop its head; the next one adopts it (and its
        running jobs) instead of starting a second head, and stops it on a clean exit.
        """
        try:
            record = json.loads(path.read_text())
            pgid, temp_dir = int(record["pgid"]), Path(record["temp_dir"])
            head = cls(
                gcs_port=int(record["gcs_port"]),
                dashboard_port=int(record["dashboard_port"]),
                temp_dir=temp_dir,
                adopted_pgid=pgid,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _group_alive(pgid) or not temp_dir.is_dir():
            return None
        try:
            head._wait_ready(timeout)
        except (TimeoutError, RuntimeError):
            return None
        return head


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pgid: int, timeout: float) -> None:
    """Stop an adopted head: its leader (pid == pgid) first, as in `stop`, then the rest."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pgid):
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def local_ray_head(
    num_cpus: int | None = None, num_gpus: int | None = None, env: dict[str, str] | None = None
) -> Iterator[LocalRayHead]:
    head = LocalRayHead(num_cpus=num_cpus, num_gpus=num_gpus, env=env or {})
    head.start()
    try:
        yield head
    finally:
        head.stop()
