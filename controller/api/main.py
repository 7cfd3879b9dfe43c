"""The FastAPI application: `create_app(settings)` builds the services and wires the routers."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from controller import __version__
from controller.api import admission, errors
from controller.api.routes import datasets, health, inference, info, models, pretrained
from controller.metrics import HttpMetricsMiddleware
from controller.services import Services
from controller.settings import Settings


def create_app(
    settings: Settings | None = None,
    services: Services | None = None,
    bind_host: str = "127.0.0.1",
    run_reconciler: bool = True,
) -> FastAPI:
    services = services or Services.build(settings or Settings())
    services.bind_host = bind_host

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_reconciler and not services.reconciler.alive:
            services.start()
            threading.Thread(target=admission.warm_up, name="warm-up", daemon=True).start()
        try:
            yield
        finally:
            if run_reconciler:
                services.stop()

    app = FastAPI(
        title="kdigits",
        version=__version__,
        description="DIGITS-style image classification on Kubernetes and Ray",
        lifespan=lifespan,
    )
    app.state.services = services
    errors.install(app)
    for module in (datasets, models, inference, pretrained, info, health):
        app.include_router(module.router)
    app.add_middleware(HttpMetricsMiddleware, metrics=services.metrics)
    return app
