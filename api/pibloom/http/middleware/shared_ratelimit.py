"""The per-client rate limit shared by every api process and replica, counted in Redis.

Token buckets in each process (ratelimit.py) give a client N budgets behind N replicas; with
PIBLOOM_RATE_LIMIT_STORAGE the count lives in one store, through the `limits` library's moving window:
at most `count` requests in any `period` seconds, whichever replica answers.

When the store cannot be reached the request is let through (fail open): the engine's bounded queue
(503 when full) and nginx's per-client limit still protect the service, while failing closed would
turn a Redis outage into a full outage. Each failure is counted (`pibloom_rate_limit_store_errors_total`)
and logged, and the store is left alone for a few seconds so requests do not each wait on a timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Protocol

from limits import RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from ...metrics import Metrics

log = logging.getLogger(__name__)

# A store that does not answer within this long counts as down; a rate limit must not add latency.
_STORE_TIMEOUT = 0.25
_NAMESPACE = "pibloom"


class Limiter(Protocol):
    def take(self, key: str) -> float | Awaitable[float]:
        """0.0 when the request may go ahead, else the seconds until it may."""


class SharedLimiter:
    def __init__(self, storage_uri: str, count: int, seconds: float, *, metrics: Metrics, pause: float = 5.0) -> None:
        # Imported only where a store is configured: redis's client is 6 MB resident in every worker.
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        storage = storage_from_string(
            uri,
            implementation="redispy",
            wrap_exceptions=True,
            socket_timeout=_STORE_TIMEOUT,
            socket_connect_timeout=_STORE_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self.limiter = MovingWindowRateLimiter(storage)  # type: ignore[arg-type]
        self.item = RateLimitItemPerSecond(count, max(1, round(seconds)))
        self.metrics = metrics
        self.pause = pause
        self._down_until = 0.0

    async def take(self, key: str) -> float:
        if time.monotonic() < self._down_until:
            return 0.0
        try:
            if await self.limiter.hit(self.item, _NAMESPACE, key):
                return 0.0
            stats = await self.limiter.get_window_stats(self.item, _NAMESPACE, key)
        except Exception as exc:  # whatever the store or its client raises: fail open, never a 500
            self._down_until = time.monotonic() + self.pause
            self.metrics.rate_limit_store_errors.inc()
            log.warning(
                "rate-limit store unreachable (%s: %s); not limiting for %.0fs", type(exc).__name__, exc, self.pause
            )
            return 0.0
        return max(stats.reset_time - time.time(), 0.001)
