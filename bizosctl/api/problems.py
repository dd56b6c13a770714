"""RFC 9457 problem documents: the one shape of every API error.

Every error the core raises is a :class:`~bizosctl.errors.BizosError` whose ``http_status``
and ``code`` say what to answer; :func:`install` registers the handlers that turn it (and
FastAPI's own validation and routing errors) into ``application/problem+json``. Routes never
build an ``HTTPException``. An unexpected exception is a 500 whose body says nothing of its
cause; the log line with the same request id has it.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from bizosctl.errors import BizosError, TenantMoving, TenantNotWritable, TooManyRequests

log = logging.getLogger("bizosctl.api")

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "https://bizos.dev/problems/"


class Problem(BaseModel):
    """An RFC 9457 problem document (every error this API answers)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str


def document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Say in the OpenAPI document what every error really looks like: each operation's
    ``422`` and ``default`` answers are problem documents (FastAPI would describe its own
    validation body, which this API never sends)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Problem"] = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    problem_response = {
        "description": "A problem document (RFC 9457)",
        "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = problem_response
            responses["default"] = problem_response
    return schema


def _request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def problem(
    request: Request,
    status: int,
    *,
    code: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {
        "type": TYPE_BASE + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": _request_id(request),
        **extra,
    }
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _for_error(request: Request, exc: BizosError) -> JSONResponse:
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    detail = exc.message
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, TenantMoving):
        headers["Retry-After"] = "2"
    elif isinstance(exc, TenantNotWritable) and exc.http_status == 423:
        extra["unlock"] = (
            "the tenant is read-only (for example, an unpaid invoice): an administrator "
            "settles billing, or an operator runs `bizosctl tenant unlock SLUG`"
        )
    if exc.http_status >= 500 and not isinstance(exc, TenantMoving):
        log.warning("request %s failed: %s", _request_id(request), exc.message)
    return problem(request, exc.http_status, code=exc.code, detail=detail, headers=headers, **extra)


def _allowed(request: Request) -> list[str]:
    from starlette.routing import Match, Route

    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(BizosError)
    async def bizos_error(request: Request, exc: BizosError) -> JSONResponse:
        return _for_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"][1:] if len(first["loc"]) > 1 else first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        return problem(request, 422, code="invalid-input", detail=detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; a path served
            # by several routes (GET and POST /customers) supports all of theirs
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(request))}
        return problem(request, exc.status_code, code=code, detail=detail, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request %s failed", _request_id(request))
        return problem(
            request, 500, code="error", detail="internal error: see the server log for this id"
        )
