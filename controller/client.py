"""A small HTTP client for the REST API (the CLI's only way to the controller)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:5000"
PLURALS = {"Dataset": "datasets", "Model": "models", "PretrainedModel": "pretrained-models"}


class ClientError(RuntimeError):
    def __init__(self, status: int, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.field = status, reason, field


class ApiClient:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        namespace: str = "default",
        timeout: float = 60.0,
    ) -> None:
        self.url = (url or os.environ.get("KDIGITS_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("KDIGITS_TOKEN", "")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.namespace = namespace
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        params = {"namespace": self.namespace, **kwargs.pop("params", {})}
        try:
            response = self.http.request(method, path, params=params, **kwargs)
        except httpx.TransportError as error:
            raise ClientError(0, f"cannot reach kdigits at {self.url}: {error}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response

    # ------------------------------------------------------------------ resources

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/{plural}", json=body).json()

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/{plural}/{name}").json()

    def list(self, plural: str, group: str | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if group:
                params["group"] = group
            if token:
                params["continue"] = token
            page = self.request("GET", f"/api/v1/{plural}", params=params).json()
            items.extend(page["items"])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def delete(self, plural: str, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/{plural}/{name}").json()

    def abort(self, plural: str, name: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/{plural}/{name}/abort").json()

    def sub(self, plural: str, name: str, what: str) -> Any:
        return self.request("GET", f"/api/v1/{plural}/{name}/{what}").json()

    def logs(self, plural: str, name: str, follow: bool = False) -> Iterator[str]:
        path = f"/api/v1/{plural}/{name}/logs"
        if not follow:
            yield self.request("GET", path).text
            return
        params = {"namespace": self.namespace, "follow": "true"}
        with self.http.stream("GET", path, params=params, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            yield from response.iter_text()

    # ------------------------------------------------------------------ using models

    def classify(
        self,
        name: str,
        image: str,
        *,
        on_server: bool = False,
        epoch: float | None = None,
        top_k: int = 5,
        visualize: bool = False,
    ) -> dict[str, Any]:
        """Classify one image: a URL, a path on the server (`on_server`), or a local file."""
        data: dict[str, Any] = {"top_k": str(top_k)}
        if epoch is not None:
            data["epoch"] = f"{epoch:g}"
        if visualize:
            data["visualize"] = "true"
        path = f"/api/v1/models/{name}/classify"
        if re.match(r"^https?://", image, re.IGNORECASE):
            data["image_url"] = image
        elif on_server:
            data["image_path"] = image
        else:
            content = Path(image).expanduser().read_bytes()
            files = {"image_file": (Path(image).name, content, "application/octet-stream")}
            return self.request("POST", path, data=data, files=files).json()
        return self.request("POST", path, data=data).json()

    def classify_many(
        self,
        name: str,
        image_list: str,
        *,
        folder: str | None = None,
        epoch: float | None = None,
        top_k: int = 5,
        top_n: int | None = None,
    ) -> dict[str, Any]:
        """Classify a local image list (`path [label]` lines naming files on the server);
        with `top_n`, the top-N per category instead. Long lists run on Ray: no timeout."""
        data: dict[str, Any] = {}
        if folder:
            data["image_folder"] = folder
        if epoch is not None:
            data["epoch"] = f"{epoch:g}"
        if top_n is not None:
            data["top_n"] = str(top_n)
            what = "top-n"
        else:
            data["top_k"] = str(top_k)
            what = "classify-many"
        content = Path(image_list).expanduser().read_bytes()
        files = {"image_list": (Path(image_list).name, content, "text/plain")}
        return self.request(
            "POST", f"/api/v1/models/{name}/{what}", data=data, files=files, timeout=None
        ).json()

    def download(
        self,
        name: str,
        *,
        epoch: float | None = None,
        fmt: str = "tar.gz",
        out: str | None = None,
    ) -> Path:
        """Save the model's archive as `out` (default: the server's file name, here)."""
        params: dict[str, Any] = {"namespace": self.namespace, "format": fmt}
        if epoch is not None:
            params["epoch"] = f"{epoch:g}"
        path = f"/api/v1/models/{name}/download"
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                disposition = response.headers.get("content-disposition", "")
                found = re.search(r'filename="?([^";]+)"?', disposition)
                default = Path(found.group(1)).name if found else f"{name}.{fmt}"
                target = Path(out).expanduser() if out else Path(default)
                partial = target.with_name(target.name + ".part")
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
                partial.replace(target)
        except httpx.TransportError as error:
            raise ClientError(0, f"cannot reach kdigits at {self.url}: {error}") from None
        return target

    def make_pretrained(
        self, name: str, *, pretrained_name: str | None = None, epoch: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if pretrained_name:
            body["name"] = pretrained_name
        if epoch is not None:
            body["epoch"] = epoch
        return self.request("POST", f"/api/v1/models/{name}/pretrained", json=body).json()

    def upload_pretrained(
        self,
        name: str,
        *,
        archive: str | None = None,
        weights: str | None = None,
        network: str | None = None,
        labels: str | None = None,
        mean: str | None = None,
        image: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload an archive, or loose files (weights, network name or layer-list JSON, ...)."""
        data: dict[str, Any] = {"name": name}
        files: dict[str, Any] = {}
        for field, local in (("archive", archive), ("weights", weights), ("labels", labels),
                             ("mean", mean)):  # fmt: skip
            if local:
                files[field] = (Path(local).name, Path(local).expanduser().read_bytes())
        if network:
            data["network"] = network
        for key, value in (image or {}).items():
            data[key] = str(value)
        return self.request(
            "POST", "/api/v1/pretrained-models", data=data, files=files, timeout=None
        ).json()

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def _error(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        return ClientError(response.status_code, response.text or response.reason_phrase)
    reason = body.get("reason") or str(body.get("detail") or response.reason_phrase)
    return ClientError(response.status_code, reason, body.get("field"))
