"""Answering from middleware, through the same error mapping as the route handlers (`http.errors`)."""

from __future__ import annotations

import json

from starlette.types import Scope, Send

from ...serving.errors import ServingError
from ..errors import render


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (names are lower-case in ASGI)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def send_error(scope: Scope, send: Send, error: ServingError) -> None:
    status, body, headers = render(str(scope.get("path", "")), error)
    raw = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": raw})
