"""/api/v1/info: version, Ray resources (total and free), stores and limits."""

from __future__ import annotations

from fastapi import APIRouter

from controller import __version__
from controller.api.deps import AuthDep, ServicesDep
from controller.api.errors import AUTH_RESPONSES
from controller.api.schemas import Info, RayInfo
from controller.ray_backend import RayUnavailable

router = APIRouter(
    prefix="/api/v1", tags=["info"], dependencies=[AuthDep], responses=AUTH_RESPONSES
)


@router.get("/info", response_model=Info)
def read_info(services: ServicesDep) -> Info:
    settings = services.settings
    ray = RayInfo(address=services.backend.address, available=False)
    try:
        resources = services.backend.resources()
        ray.available = True
        keep = ("CPU", "GPU", "memory")
        ray.total = {k: v for k, v in resources.total.items() if k in keep}
        ray.free = {k: v for k, v in resources.available.items() if k in keep}
        for key in ("CPU", "GPU"):
            ray.total.setdefault(key, 0.0)
            ray.free.setdefault(key, 0.0)
    except RayUnavailable as error:
        ray.error = str(error)
    return Info(
        version=__version__,
        store=services.objects.url,
        job_store=f"sqlite://{settings.database}",
        ray=ray,
        limits={
            "maxRunningJobs": settings.max_running_jobs,
            "maxGpus": settings.max_gpus,
            "maxCpus": settings.max_cpus,
            "allowCustomPython": settings.allow_custom_python,
        },
        data_roots=[str(p) for p in settings.data_root_paths],
    )
