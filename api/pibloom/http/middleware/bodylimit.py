"""Request body size limit: 413 before a large body is read, whether it declares its length or not."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...serving.errors import ErrorKind, ServingError
from .responses import header, send_error


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(scope, send)
                return
            await self.app(scope, receive, send)  # the server enforces the declared length
            return
        if header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body
            return
        # Chunked: read up to the limit here (the routes read whole JSON bodies anyway), then replay it.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)  # disconnected early
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"Request body too large (limit {self.max_bytes} bytes)"
        await send_error(scope, send, ServingError(ErrorKind.TOO_LARGE, message, code="request_too_large"))


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
