"""Opt-in (PIBLOOM_LOG_PROMPTS) logging of inference request and response bodies, for debugging.

Installed only when the setting is on, so prompts and completions cannot reach the logs otherwise.
Bodies are cut at `limit` bytes each; a streamed response is logged as the event stream it was.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..paths import is_operational

log = logging.getLogger("pibloom.prompts")


class PromptLogMiddleware:
    def __init__(self, app: ASGIApp, *, limit: int = 65_536) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or is_operational(str(scope["path"])):
            await self.app(scope, receive, send)
            return
        request = bytearray()
        response = bytearray()
        status = 0

        async def tap_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                request.extend(message.get("body", b"")[: self.limit - len(request)])
            return message

        async def tap_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                response.extend(message.get("body", b"")[: self.limit - len(response)])
            await send(message)

        try:
            await self.app(scope, tap_receive, tap_send)
        finally:
            log.info(
                "%s %s %d request=%s response=%s",
                scope["method"],
                scope["path"],
                status,
                request.decode("utf-8", "replace"),
                response.decode("utf-8", "replace"),
            )
