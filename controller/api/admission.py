"""Admission checks beyond the schema: what only the server can tell at create time.

- folder and textfile paths must be absolute and lie inside KDIGITS_DATA_ROOTS once symlinks
  are resolved, and exist;
- an S3 endpoint must be the store's own or one of KDIGITS_ALLOWED_URL_HOSTS;
- a Model's dataset, previous model and pretrained model must exist (a pretrained model that is
  being deleted is refused too); a standard network must be known; custom Python only when
  KDIGITS_ALLOW_CUSTOM_PYTHON is set.
Each failure is a 422 naming the field.
"""

from __future__ import annotations

import functools
import importlib
import logging
from pathlib import Path
from urllib.parse import urlparse

from controller.api.errors import ApiError
from controller.settings import Settings
from controller.store import NotFound, Store
from jobs.specs import DatasetSpec, ModelSpec

log = logging.getLogger(__name__)

BUILTIN_NETWORKS = ("lenet", "alexnet", "googlenet")


def _invalid(field: str, reason: str) -> ApiError:
    return ApiError(422, reason, field)


def check_path(field: str, value: str, roots: list[Path], kind: str) -> None:
    path = Path(value)
    if not path.is_absolute():
        raise _invalid(field, f"{value!r} must be an absolute path")
    if ".." in path.parts:
        raise _invalid(field, f"{value!r} must not contain '..'")
    resolved = path.resolve()
    if not any(resolved == root or root in resolved.parents for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise _invalid(field, f"{value!r} is outside the data roots ({allowed})")
    if kind == "dir" and not resolved.is_dir():
        raise _invalid(field, f"{value!r} is not an existing folder")
    if kind == "file" and not resolved.is_file():
        raise _invalid(field, f"{value!r} is not an existing file")


def check_dataset(spec: DatasetSpec, settings: Settings) -> None:
    roots = settings.data_root_paths
    source = spec.source
    if source.folder is not None:
        for name in ("train", "val", "test"):
            value = getattr(source.folder, name)
            if value is not None:
                check_path(f"spec.source.folder.{name}", value, roots, "dir")
    if source.textfile is not None:
        for name in ("train", "val", "test", "labels"):
            value = getattr(source.textfile, name)
            if value is not None:
                check_path(f"spec.source.textfile.{name}", value, roots, "file")
        if source.textfile.root is not None:
            check_path("spec.source.textfile.root", source.textfile.root, roots, "dir")
    if source.s3 is not None and source.s3.endpoint:
        host = urlparse(source.s3.endpoint).hostname or ""
        allowed = set(settings.url_hosts)
        if settings.s3_endpoint:
            allowed.add(urlparse(settings.s3_endpoint).hostname or "")
        if host not in allowed:
            raise _invalid(
                "spec.source.s3.endpoint",
                f"host {host!r} is not allowed (KDIGITS_ALLOWED_URL_HOSTS)",
            )


@functools.lru_cache(maxsize=1)
def _network_names() -> frozenset[str] | None:
    """Standard network names from jobs.networks when it is there (None: cannot tell)."""
    try:
        networks = importlib.import_module("jobs.networks")
    except ImportError:
        return None
    for attr in ("standard_names", "network_names", "available_networks"):
        fn = getattr(networks, attr, None)
        if callable(fn):
            try:
                return frozenset(str(n) for n in fn())
            except Exception:  # noqa: BLE001 - fall back to the registry below
                log.exception("jobs.networks.%s failed", attr)
    for attr in ("NETWORKS", "STANDARD_NETWORKS", "REGISTRY"):
        registry = getattr(networks, attr, None)
        if isinstance(registry, dict | list | tuple | set | frozenset):
            return frozenset(str(n) for n in registry)
    return None


def warm_up() -> None:
    """Load the network list ahead of the first request (it imports torch: seconds)."""
    try:
        _network_names()
    except Exception:  # noqa: BLE001 - only a cache warm-up
        log.exception("could not load the standard network names")


def known_network(name: str) -> bool:
    names = _network_names()
    if names is None:
        if name in BUILTIN_NETWORKS:
            return True
        try:
            from torchvision import models

            return name in models.list_models(module=models)
        except Exception:  # noqa: BLE001 - no torchvision: accept, the job will tell
            return True
    return name in names


def _must_exist(store: Store, kind: str, name: str, namespace: str, field: str, what: str) -> None:
    """422 on `field` unless the named object is there (and not on its way out)."""
    try:
        obj = store.get(kind, name, namespace)
    except NotFound:
        raise _invalid(field, f'{what} "{name}" does not exist') from None
    if kind == "PretrainedModel" and obj.metadata.deletion_timestamp is not None:
        raise _invalid(field, f'{what} "{name}" is being deleted')


def check_model(spec: ModelSpec, namespace: str, settings: Settings, store: Store) -> None:
    _must_exist(store, "Dataset", spec.dataset, namespace, "spec.dataset", "dataset")
    network = spec.network
    if network.standard is not None and not known_network(network.standard):
        raise _invalid("spec.network.standard", f'unknown network "{network.standard}"')
    custom_python = network.custom is not None and network.custom.python is not None
    if custom_python and not settings.allow_custom_python:
        raise _invalid(
            "spec.network.custom.python",
            "custom Python networks are disabled (KDIGITS_ALLOW_CUSTOM_PYTHON)",
        )
    if network.previous is not None:
        ref = network.previous.model
        _must_exist(store, "Model", ref, namespace, "spec.network.previous.model", "model")
    if network.pretrained is not None:
        ref = network.pretrained.name
        field = "spec.network.pretrained.name"
        _must_exist(store, "PretrainedModel", ref, namespace, field, "pretrained model")
