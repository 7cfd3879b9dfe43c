"""`kdigits serve`: the REST API, the reconciler and, with no KDIGITS_RAY_ADDRESS, a private
Ray head on 127.0.0.1, in one process.

The head is stopped when serve exits on SIGTERM or SIGINT (no orphaned processes). A serve
killed with SIGKILL cannot do that: the head keeps running its jobs, and the next serve on the
same HOME adopts it (recorded in HOME/ray-head.json) instead of starting a second one, so no
job runs twice. One serve per HOME at a time (an exclusive lock on HOME/serve.lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO

from controller.settings import LOOPBACK_HOSTS, Settings

log = logging.getLogger("kdigits.serve")

HEAD_RECORD = "ray-head.json"


class ServeError(RuntimeError):
    pass


@contextlib.contextmanager
def home_lock(home: Path) -> Iterator[IO[str]]:
    home.mkdir(parents=True, exist_ok=True)
    handle = (home / "serve.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ServeError(f"another kdigits serve is using {home} (KDIGITS_HOME)") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield handle
    finally:
        handle.close()


@contextlib.contextmanager
def ray_head(settings: Settings) -> Iterator[str]:
    """The Ray Jobs API address: the configured one, or a private head's (adopted or new)."""
    if settings.ray_dashboard_url:
        yield settings.ray_dashboard_url
        return
    from controller.ray_local import LocalRayHead

    record = settings.home_dir / HEAD_RECORD
    head = LocalRayHead.adopt(record)
    if head is not None:
        log.info("adopted the local Ray head at %s", head.dashboard_url)
    try:
        if head is None:
            log.info("starting a local Ray head on 127.0.0.1")
            head = LocalRayHead(num_cpus=settings.local_ray_cpus, num_gpus=settings.local_ray_gpus)
            head.start()
            head.save(record)
        yield head.dashboard_url
    finally:
        if head is not None:
            log.info("stopping the local Ray head")
            head.stop()
        record.unlink(missing_ok=True)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def serve(host: str = "127.0.0.1", port: int = 5000, settings: Settings | None = None) -> int:
    import uvicorn

    from controller.api.main import create_app
    from controller.services import Services

    settings = settings or Settings()
    if host not in LOOPBACK_HOSTS and not settings.token and not settings.kubernetes:
        raise ServeError(
            f"refusing to serve on {host} without KDIGITS_TOKEN: set a token, or bind 127.0.0.1"
        )
    # uvicorn re-raises the signal it caught after a graceful shutdown: make that an exit
    # that runs the `finally` blocks below (stopping the Ray head), not a silent death.
    previous = {s: signal.signal(s, _raise_exit) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with home_lock(settings.home_dir), ray_head(settings) as address:
            settings.ray_address = address
            if settings.kubernetes:  # cluster mode: CRs, kopf, TokenReview/SubjectAccessReview
                from controller.operator.cluster import build_services

                services = build_services(settings)
            else:
                services = Services.build(settings)
            app = create_app(services=services, bind_host=host)
            print(f"kdigits serving on http://{host}:{port} (Ray at {address})", flush=True)
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="info",
                access_log=False,
                timeout_graceful_shutdown=5,
            )
            uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(host: str, port: int, kubernetes: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return serve(host, port, Settings(kubernetes=True) if kubernetes else None)
    except ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:
        return (
            0 if exit_.code in (128 + signal.SIGTERM, 128 + signal.SIGINT) else int(exit_.code or 0)
        )
