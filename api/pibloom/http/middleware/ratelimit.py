"""Per-client token buckets for deployments without nginx in front: 429 with Retry-After.

A client is its API key when it sends a valid one (several users behind one NAT keep their own
budgets), otherwise its address. An invalid key counts against the address, so inventing keys does
not buy fresh budgets.
"""

from __future__ import annotations

import collections
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from ...metrics import Metrics
from ...serving.errors import ErrorKind, ServingError
from ..auth import KeyRing, bearer_token
from ..paths import is_operational
from .clients import TrustedProxies
from .responses import header, send_error
from .shared_ratelimit import Limiter


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`capacity` requests at once, refilled at `rate` per second; one bucket per key."""

    def __init__(
        self, rate: float, capacity: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.max_keys = max_keys
        # Least recently seen first; memory stays bounded however many addresses show up.
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def take(self, key: str) -> float:
        """Spend one token: 0.0 if allowed, else the seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = _Bucket(float(self.capacity), now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            # The oldest key is the likeliest to be refilled anyway; evicting it resets it to full.
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        buckets: Limiter,
        trusted: TrustedProxies,
        api_keys: KeyRing,
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.buckets = buckets
        self.trusted = trusted
        self.api_keys = api_keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or is_operational(str(scope["path"])):
            await self.app(scope, receive, send)
            return
        wait = self.buckets.take(self.client_key(scope))
        if inspect.isawaitable(wait):  # the shared store answers asynchronously
            wait = await wait
        if wait > 0:
            if self.metrics is not None:
                self.metrics.rejected.labels("rate_limited").inc()
            error = ServingError(
                ErrorKind.RATE_LIMITED,
                "Too many requests from this client; retry shortly.",
                code="rate_limit_exceeded",
                retry_after=max(1, math.ceil(wait)),
            )
            await send_error(scope, send, error)
            return
        await self.app(scope, receive, send)

    def client_key(self, scope: Scope) -> str:
        token = bearer_token(header(scope, b"authorization"))
        if self.api_keys.matches(token):
            assert token is not None
            return "key:" + KeyRing.digest(token)
        return "addr:" + self.trusted.client_address(scope)
