"""Pure figures of one load level: percentiles, throughput, ratios. No I/O, so it is easy to test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class RequestResult:
    """What the client saw of one streamed request; times are seconds on a monotonic clock."""

    start: float
    end: float
    first_token: float | None = None
    last_token: float | None = None
    tokens: int = 0
    error: str | None = None
    # Cancelled at the level's deadline: its figures are lower bounds.
    cut: bool = False
    text: str = ""  # what was streamed (a chat case sends it back as the next turn's history)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.cut

    @property
    def ttft(self) -> float:
        """Time to first token; for a request cut before its first token, the time it waited (a lower bound)."""
        return (self.first_token if self.first_token is not None else self.end) - self.start

    @property
    def itl(self) -> float | None:
        """Mean gap between the tokens after the first (needs two tokens)."""
        if self.first_token is None or self.last_token is None or self.tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.tokens - 1)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear-interpolation percentile (numpy's default method); None for no values."""
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator / denominator`, or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass
class LevelStats:
    """The figures of one peer at one concurrency."""

    peer: str
    concurrency: int
    requests: int
    completed: int
    errors: int
    cut: int
    tokens: int
    wall_s: float
    tokens_per_s: float | None
    tokens_per_request: float | None
    ttft_p50: float | None
    ttft_p95: float | None
    itl_p50: float | None
    rss_peak_bytes: int | None = None
    error_samples: list[str] = field(default_factory=list)

    @property
    def ttft_is_lower_bound(self) -> bool:
        return self.cut > 0


def summarize(
    peer: str, concurrency: int, results: Sequence[RequestResult], rss_peak_bytes: int | None = None
) -> LevelStats:
    """Aggregate one level: tokens/s over the wall time from the first start to the last end.

    Tokens from requests cut at the deadline count (they were served within the wall time); errors
    count as nothing but are reported.
    """
    served = [r for r in results if r.error is None]
    errors = [r for r in results if r.error is not None]
    wall = (max(r.end for r in results) - min(r.start for r in results)) if results else 0.0
    tokens = sum(r.tokens for r in served)
    completed = [r for r in served if not r.cut]
    itls = [v for r in completed if (v := r.itl) is not None]
    ttfts = [r.ttft for r in served]
    return LevelStats(
        peer=peer,
        concurrency=concurrency,
        requests=len(results),
        completed=len(completed),
        errors=len(errors),
        cut=sum(1 for r in served if r.cut),
        tokens=tokens,
        wall_s=wall,
        tokens_per_s=ratio(tokens, wall) if tokens else None,
        tokens_per_request=(sum(r.tokens for r in completed) / len(completed)) if completed else None,
        ttft_p50=percentile(ttfts, 50),
        ttft_p95=percentile(ttfts, 95),
        itl_p50=percentile(itls, 50),
        rss_peak_bytes=rss_peak_bytes,
        error_samples=sorted({r.error for r in errors if r.error})[:3],
    )
