"""/healthz, /readyz and /metrics: for kubelet probes and Prometheus (no token needed)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from controller.api.deps import ServicesDep
from controller.api.schemas import Health
from controller.ray_backend import RayUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def read_health() -> Health:
    """The process answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Not ready"}},
)
def read_ready(services: ServicesDep) -> Response:
    """Ready: the job store answers, the reconciler loop runs, and Ray answers."""
    checks: dict[str, str] = {}
    try:
        services.store.count_by_phase()
        checks["store"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure means not ready
        checks["store"] = str(error)
    reconciler = services.reconciler
    checks["reconciler"] = "ok" if reconciler.alive and reconciler.passes > 0 else "starting"
    if services.operator is not None:  # cluster mode: the kopf operator must be running
        checks["operator"] = "ok" if services.operator.alive else "stopped"
    try:
        services.backend.resources()
        checks["ray"] = "ok"
    except RayUnavailable as error:
        checks["ray"] = str(error)
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ready else "unavailable", checks=checks)
    return JSONResponse(status_code=200 if ready else 503, content=body.model_dump())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def read_metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
