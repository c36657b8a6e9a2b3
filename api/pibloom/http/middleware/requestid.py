"""X-Request-ID: taken from the request (nginx or Express set it) or made here, echoed on the response,
and put into every log record written while the request is handled (through a context variable).

The same middleware writes the access log, so each line carries the id and nothing private: no query
string, no headers, no body; and, from the same status and duration, it records the request latency
metric, so one wrapper of `send` serves all three.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...metrics import Metrics
from ..paths import is_operational
from ..request_context import REQUEST_ID
from .clients import TrustedProxies
from .responses import header

HEADER = "X-Request-ID"
# What nginx's $request_id, UUIDs and most tracing ids look like; anything else (log injection, huge
# values) is replaced rather than trusted. nginx and the web server apply the same rule.
_VALID = re.compile(r"[A-Za-z0-9._~:+/=-]{1,128}")

access_log = logging.getLogger("pibloom.access")


def accept_or_new(value: str | None) -> str:
    if value is not None and _VALID.fullmatch(value):
        return value
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(
        self, app: ASGIApp, *, trusted: TrustedProxies, access: bool = True, metrics: Metrics | None = None
    ) -> None:
        self.app = app
        self.trusted = trusted
        self.access = access
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accept_or_new(header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            if self.metrics is not None:
                # The route template, never the raw path, keeps label cardinality bounded.
                path = getattr(scope.get("route"), "path", None) or "unmatched"
                self.metrics.request_latency.labels(path, scope["method"], str(status)).observe(seconds)
            if self.access:
                self._log(scope, status, seconds)
            REQUEST_ID.reset(token)

    def _log(self, scope: Scope, status: int, seconds: float) -> None:
        path = str(scope.get("path", ""))
        if is_operational(path) and status < 400:
            return  # probes and scrapes every few seconds would drown the log
        method = str(scope.get("method", ""))
        client = self.trusted.client_address(scope)
        ms = round(seconds * 1000, 1)
        fields = {"method": method, "path": path, "status": status, "duration_ms": ms, "client": client}
        access_log.info("%s %s %d %.1fms client=%s", method, path, status, ms, client, extra={"http": fields})
