"""The controller's settings: environment variables with the `KDIGITS_` prefix (DESIGN.md).

`HOME` holds the embedded default's object store (`HOME/store`) and job database
(`HOME/kdigits.db`). An empty `RAY_ADDRESS` means `kdigits serve` starts a private Ray head on
127.0.0.1; otherwise it is the Ray Jobs API (dashboard) address, `http://host:8265` or
`host:8265`. List settings (`DATA_ROOTS`, `ALLOWED_URL_HOSTS`) are `:`- or `,`-separated strings.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller import __version__

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _split(value: str, seps: str) -> list[str]:
    for sep in seps[1:]:
        value = value.replace(sep, seps[0])
    return [part.strip() for part in value.split(seps[0]) if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KDIGITS_", extra="ignore")

    home: Path = Field(Path("~/.kdigits"), description="Local object store, database, data")
    ray_address: str = Field("", description="Ray Jobs API address; empty: a local head")
    store_url: str = Field("", description="file:///path or s3://bucket/prefix")
    s3_endpoint: str = Field("", description="S3/MinIO endpoint URL for an s3:// store")
    data_roots: str = Field("", description="Readable directories, ':'-separated")
    allowed_url_hosts: str = Field("", description="Hosts URLs may be fetched from, ','-sep")
    token: str = Field("", description="Bearer token required outside loopback")
    db_path: Path | None = Field(None, description="SQLite job store; default HOME/kdigits.db")
    max_running_jobs: int = Field(2, ge=1, description="Jobs running at the same time")
    max_gpus: float | None = Field(None, ge=0, description="GPUs in use at most; empty: Ray's")
    max_cpus: float | None = Field(None, ge=0, description="CPUs in use at most; empty: Ray's")
    allow_custom_python: bool = Field(False, description="Accept network.custom.python")
    reconcile_interval: float = Field(0.5, gt=0, description="Seconds between reconcile passes")
    job_python: str = Field("", description="Python for job entrypoints; empty: 'python'")
    local_ray_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray head")
    local_ray_gpus: int | None = Field(None, ge=0, description="GPUs of the local Ray head")
    kubernetes: bool = Field(
        False,
        description=(
            "Run in the cluster: custom resources as the job store, the kopf operator, and "
            "TokenReview/SubjectAccessReview on REST requests"
        ),
    )

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def database(self) -> Path:
        return (self.db_path or self.home_dir / "kdigits.db").expanduser()

    @property
    def object_store_url(self) -> str:
        return self.store_url or (self.home_dir / "store").as_uri()

    @property
    def data_root_paths(self) -> list[Path]:
        roots = _split(self.data_roots, ":") if self.data_roots else []
        if not roots:
            return [self.home_dir, Path.home().resolve()]
        return [Path(root).expanduser().resolve() for root in roots]

    @property
    def url_hosts(self) -> list[str]:
        return _split(self.allowed_url_hosts, ", ")

    @property
    def ray_dashboard_url(self) -> str:
        address = self.ray_address.strip()
        if not address:
            return ""
        if "://" not in address:
            address = f"http://{address}"
        return address.rstrip("/")

    def job_env(self) -> dict[str, str]:
        """Environment variables every job gets: how to reach the object store."""
        env: dict[str, str] = {}
        if self.s3_endpoint:
            env["KDIGITS_S3_ENDPOINT"] = self.s3_endpoint
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
        ):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env


__all__ = ["LOOPBACK_HOSTS", "Settings", "__version__"]
