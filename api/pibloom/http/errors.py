"""Errors over HTTP, in one place: each `ErrorKind` -> status, OpenAI error type and headers, and the
body shape by path (OpenAI's object under /v1, FastAPI's `{"detail": ...}` elsewhere)."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..serving.errors import ErrorKind, ServingError
from .paths import is_openai

log = logging.getLogger("pibloom")

STATUS = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.INTERNAL: 500,
    ErrorKind.UNAVAILABLE: 503,
}
OPENAI_TYPE = {
    ErrorKind.UNAUTHORIZED: "authentication_error",
    ErrorKind.RATE_LIMITED: "rate_limit_error",
    ErrorKind.INTERNAL: "server_error",
    ErrorKind.UNAVAILABLE: "server_error",
}


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def openai_body(error: ServingError) -> dict[str, Any]:
    return error_body(error.message, OPENAI_TYPE.get(error.kind, "invalid_request_error"), error.code, error.param)


def headers_for(error: ServingError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.kind is ErrorKind.UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    if error.kind is ErrorKind.TOO_LARGE:
        headers["Connection"] = "close"
    return headers


def render(path: str, error: ServingError) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers of `error` answered on `path`."""
    body = openai_body(error) if is_openai(path) else {"detail": error.message}
    return STATUS[error.kind], body, headers_for(error)


_TYPE_LABEL = re.compile(r"^(str|int|float|bool|list|dict|none|function-\w+)(\[.*\])?$")


def _describe_validation(errors: list[Any]) -> tuple[str, str | None, str]:
    """Turn pydantic's error list into one readable sentence naming the field."""
    first = errors[0]
    # Unions add their member's type to the location ("text.list[str].0"): keep only the field path.
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _TYPE_LABEL.match(str(p))]
    field = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return f"Unsupported field: '{field}' is not supported by this server", field, "unsupported_field"
    if kind == "json_invalid" or (kind == "model_attributes_type" and not loc):
        return "Request body is not valid JSON (expected a JSON object)", None, "invalid_json"
    if kind == "missing":
        return f"Missing required field: '{field}'", field, "missing_field"
    message = first.get("msg", "invalid value")
    return (f"Invalid value for '{field}': {message}" if field else message), field, "invalid_value"


def _jsonable(errors: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in err.items() if k in ("type", "loc", "msg")} for err in errors]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, exc: ServingError) -> JSONResponse:
        status, body, headers = render(request.url.path, exc)
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if not is_openai(request.url.path):
            # FastAPI's own shape (422) on piBLOOM's original routes, as their clients expect.
            return JSONResponse({"detail": _jsonable(errors)}, status_code=422)
        message, field, code = _describe_validation(errors)
        return JSONResponse(error_body(message, "invalid_request_error", code, field), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if is_openai(request.url.path):
            code = "not_found" if exc.status_code == 404 else None
            body = error_body(str(exc.detail), "invalid_request_error", code)
            return JSONResponse(body, status_code=exc.status_code, headers=headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client; the log has it.
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body("internal server error", "server_error", "internal_error"), 500)
