"""Errors as JSON that name the field and the reason.

Every error body has `reason` (a sentence) and, when one field is at fault, `field` (a dotted
camelCase path such as `spec.source.folder.train`), besides FastAPI's usual `detail`. For 422,
`detail` keeps FastAPI's list of `{loc, msg, type}` so generated clients still understand it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from controller.store import AlreadyExists, Conflict, NotFound


class ErrorBody(BaseModel):
    detail: Any = Field(description="A message, or for 422 FastAPI's list of {loc, msg, type}")
    reason: str = Field(description="What is wrong, in one sentence")
    field: str | None = Field(None, description="The offending field, as a dotted path")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not JSON"},
    404: {"model": ErrorBody, "description": "Not found"},
    409: {"model": ErrorBody, "description": "Conflict with the current state"},
}
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token"},
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.field = status, reason, field


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic adds the model-validator/union branch names; keep the data path only
    parts = [p for p in parts if not p.startswith("function-") and "[" not in p]
    return ".".join(parts)


def _json(status: int, reason: str, field: str | None, detail: Any = None) -> JSONResponse:
    body = {"detail": detail if detail is not None else reason, "reason": reason}
    if field:
        body["field"] = field
    return JSONResponse(status_code=status, content=body)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        detail = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in errors
        ]
        first = errors[0] if errors else {}
        field = field_path(first.get("loc", ())) or None
        msg = str(first.get("msg", "invalid request"))
        reason = f"{field}: {msg}" if field else msg
        return _json(422, reason, field, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _json(exc.status_code, str(exc.detail), None)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        detail: Any = exc.reason
        if exc.status == 422 and exc.field:
            loc = ["body", *exc.field.split(".")]
            detail = [{"loc": loc, "msg": exc.reason, "type": "value_error"}]
        reason = f"{exc.field}: {exc.reason}" if exc.field and exc.status == 422 else exc.reason
        return _json(exc.status, reason, exc.field, detail)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _json(404, str(exc), None)

    @app.exception_handler(AlreadyExists)
    async def _exists(_: Request, exc: AlreadyExists) -> JSONResponse:
        return _json(409, str(exc), "metadata.name")

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return _json(409, str(exc), "metadata.resourceVersion")
