"""kopf in a thread of its own, beside the REST API and the reconciler in one process.

`kdigits serve` in cluster mode starts it with the services (Services.start) and stops it
first on the way out. kopf runs its asyncio loop in this thread; its handlers are synchronous
and run in kopf's worker threads. One replica at a time (the chart's Deployment uses the
Recreate strategy), so kopf runs standalone, without peering.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import kopf

from controller.operator.handlers import OperatorContext, build_registry
from controller.store.kubernetes import FINALIZER

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 5.0


def operator_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kdigits.io", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events tell the normal story
    settings.posting.reporting_component = "kdigits-operator"
    settings.peering.standalone = True
    settings.networking.request_timeout = 60
    return settings


class Operator:
    """Start and stop kopf for one set of services."""

    def __init__(self, context: OperatorContext, progress_interval: float = PROGRESS_INTERVAL_S):
        self.context = context
        self.progress_interval = progress_interval
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 60) -> None:
        if self.alive:
            return
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kdigits-operator", daemon=True)
        self._thread.start()
        deadline = timeout
        while not self._ready.wait(0.1):
            deadline -= 0.1
            if not self.alive or deadline <= 0:
                raise RuntimeError(f"the kopf operator did not start: {self.error}")

    def _run(self) -> None:
        memo = kopf.Memo(kdigits=self.context)
        try:
            asyncio.run(
                kopf.operator(
                    registry=build_registry(self.progress_interval),
                    settings=operator_settings(),
                    clusterwide=True,
                    standalone=True,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                    memo=memo,
                )
            )
        except BaseException as error:  # noqa: BLE001 - reported by start() and the log
            self.error = error
            log.exception("the kopf operator stopped")

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
