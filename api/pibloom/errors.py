"""One error type for the whole api, mapped to HTTP status and body shape in one place."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def overloaded(message: str, retry_after: int) -> APIError:
    return APIError(
        503,
        message,
        type="server_error",
        code="server_overloaded",
        headers={"Retry-After": str(retry_after)},
    )


def _is_openai_path(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def error_body(message: str, type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        if _is_openai_path(request):
            body = error_body(exc.message, exc.type, exc.code, exc.param)
        else:
            body = {"detail": exc.message}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if not _is_openai_path(request):
            # FastAPI's own shape (422) on piBLOOM's original routes, as their clients expect.
            return JSONResponse({"detail": _jsonable(errors)}, status_code=422)
        message, field, code = _describe_validation(errors)
        return JSONResponse(error_body(message, "invalid_request_error", code, field), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if _is_openai_path(request):
            code = "not_found" if exc.status_code == 404 else None
            body = error_body(str(exc.detail), "invalid_request_error", code)
            return JSONResponse(body, status_code=exc.status_code, headers=headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client; the log has it.
        import logging

        logging.getLogger("pibloom").exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body("internal server error", "server_error", "internal_error"), 500)


def _jsonable(errors: list[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        item = {k: v for k, v in err.items() if k in ("type", "loc", "msg")}
        out.append(item)
    return out
