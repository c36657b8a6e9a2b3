"""Answering from middleware, in the same body shapes as the api's error handlers."""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from ..errors import error_body

# Probes, metrics and docs: never rate limited, never logged as prompts, never cut by the watchdog.
OPERATIONAL_PREFIXES = ("/health/", "/v2/health/", "/v2/models/", "/metrics", "/docs", "/redoc", "/openapi.json")


def is_operational(path: str) -> bool:
    return path.startswith(OPERATIONAL_PREFIXES)


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (names are lower-case in ASGI)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    message: str,
    *,
    type: str,
    code: str,
    headers: dict[str, str] | None = None,
) -> None:
    """OpenAI's error object under /v1, FastAPI's `{"detail": ...}` elsewhere (as errors.py does)."""
    openai = str(scope.get("path", "")).startswith("/v1/")
    body = error_body(message, type, code) if openai else {"detail": message}
    raw = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": raw})
