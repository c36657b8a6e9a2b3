"""When to retry a request, and how long to wait first."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

# Timeouts, overload and server faults are worth another try; other 4xx mean the input is wrong.
RETRYABLE_4XX = frozenset({408, 425, 429})
MAX_RETRY_AFTER_S = 300.0


def is_retryable_status(status: int) -> bool:
    return status in RETRYABLE_4XX or status >= 500


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent/bad.

    The result is clamped to [0, 300] so a confused server cannot park the client for hours.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with "equal jitter": half the step is fixed, half random.

    The fixed half keeps the delay growing; the random half stops many clients that failed together
    from retrying together.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `retry` (0 for the first retry)."""
        step = min(self.cap, self.base * self.factor ** max(retry, 0))
        return step / 2 + (rng or random).uniform(0, step / 2)
