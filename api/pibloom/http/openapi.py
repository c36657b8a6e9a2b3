"""Documents, in the OpenAPI schema, the error answers every route can give.

Several come from middleware (413 body limit, 429 rate limit, 503 engine failure) or from shared
dependencies (401 API key), and /v1 answers bad input with OpenAI's 400 error object rather than
FastAPI's 422: patched here in one place, so the schema says what clients actually get (schemathesis
checks it in the tests).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .paths import is_openai, is_operational


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class OpenAIError(BaseModel):
    """The error body on /v1 routes."""

    error: ErrorDetail


class Detail(BaseModel):
    """The error body on piBLOOM's own routes (FastAPI's shape)."""

    detail: str


_WHY = {
    400: "Bad input (the message names the field)",
    401: "Missing or invalid API key (when keys are configured)",
    404: "Unknown model",
    413: "Request body too large",
    429: "Rate limit exceeded (when PIBLOOM_RATE_LIMIT is set); see Retry-After",
    503: "Loading, draining, overloaded or engine failure; see Retry-After",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(status: int, schema: str) -> dict[str, Any]:
    return {"description": _WHY[status], "content": {"application/json": {"schema": _ref(schema)}}}


def _body_fields(operation: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    name = str(body.get("$ref", "")).rsplit("/", 1)[-1]
    fields: dict[str, Any] = schemas.get(name, {}).get("properties", {})
    return fields


def _has_stream_option(operation: dict[str, Any], schemas: dict[str, Any]) -> bool:
    return "stream" in _body_fields(operation, schemas)


# One server-sent event of a `stream: true` answer. Per event, as OpenAPI 3.2's `itemSchema` has it and
# as schemathesis reads `schema` on 3.0 and 3.1: it validates each parsed event against this.
_STREAM_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "`stream: true`: one event per chunk, its `data` the chunk's JSON; the last `data` is [DONE]",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
}


def patch_schema(schema: dict[str, Any]) -> dict[str, Any]:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (OpenAIError, Detail):
        definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(definition.pop("$defs", {}))
        schemas[model.__name__] = definition
    for path, operations in schema.get("paths", {}).items():
        if is_operational(path):
            continue
        openai = is_openai(path)
        body = "OpenAIError" if openai else "Detail"
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if openai:
                responses.pop("422", None)  # /v1 validation errors are 400s in OpenAI's shape
            statuses = [401, 413, 429, 503]
            if "requestBody" in operation or openai:
                # A body naming a `model` (vLLM's /tokenize fields too) can name an unknown one: 404.
                statuses += [400, 404] if openai or "model" in _body_fields(operation, schemas) else [400]
            for status in statuses:
                responses.setdefault(str(status), _error(status, body))
            if _has_stream_option(operation, schemas) and "200" in responses:
                content = responses["200"].setdefault("content", {})
                content["text/event-stream"] = {"schema": _STREAM_EVENT}
    return schema


def document_errors(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = patch_schema(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
