"""Ends requests whose engine thread has died, instead of leaving them waiting forever.

The engine thread reports its death (`Engine.alive` turns false, so liveness fails and new requests
get 503), but a request already waiting for tokens would wait on a queue nobody fills. One poller per
app, running only while requests are in flight, notices the death and those requests are cancelled:
503 if nothing was sent yet; a stream already under way gets an error event and `[DONE]`, as when
generation fails (`http.sse`), so clients end cleanly and see why.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...serving.errors import unavailable
from ..paths import is_operational
from ..sse import closing_bytes
from .responses import send_error

if TYPE_CHECKING:  # the engine side imports torch: not at import time
    from ...serving.lifecycle import ModelHost

_MESSAGE = "the inference engine stopped; retry on another replica"


class EngineWatchdogMiddleware:
    def __init__(self, app: ASGIApp, *, host: ModelHost, poll_seconds: float = 0.2) -> None:
        self.app = app
        self.host = host
        self.poll_seconds = poll_seconds
        self._in_flight = 0
        self._watcher: asyncio.Task[None] | None = None
        self._died: asyncio.Event | None = None

    async def _watch(self) -> None:
        assert self._died is not None
        while self._in_flight:
            if self.host.engine_dead:
                self._died.set()
                return
            await asyncio.sleep(self.poll_seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_operational(str(scope["path"])):
            await self.app(scope, receive, send)
            return
        if self._died is None:
            self._died = asyncio.Event()
        started = finished = event_stream = False

        async def send_tracking(message: Message) -> None:
            nonlocal started, finished, event_stream
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers", ())).get(b"content-type", b"")
                event_stream = bytes(content_type).startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        self._in_flight += 1
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())
        work = asyncio.ensure_future(self.app(scope, receive, send_tracking))
        died = asyncio.ensure_future(self._died.wait())
        try:
            await asyncio.wait({work, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._in_flight -= 1
            died.cancel()
            if not work.done():
                work.cancel()  # runs the handlers' `finally`: the engine request is cancelled too
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if not work.cancelled():
            work.result()  # re-raise what the app raised
            return
        error = unavailable(_MESSAGE, self.host.retry_after, code="engine_failed")
        if not started:
            await send_error(scope, send, error)
        elif not finished:
            tail = closing_bytes(error) if event_stream else b""
            await send({"type": "http.response.body", "body": tail, "more_body": False})
