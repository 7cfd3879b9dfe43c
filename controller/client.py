"""A small HTTP client for the REST API (the CLI's only way to the controller)."""

from __future__ import annotations

import os
from collections.abc import Iterator
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
