"""Percentiles, ratios and the per-level summary: the arithmetic every figure in the table rests on."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pibloom.bench.stats import RequestResult, percentile, ratio, summarize


@pytest.mark.parametrize("pct", [0, 5, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear_interpolation(pct: float) -> None:
    rng = random.Random(pct)
    values = [rng.uniform(0, 10) for _ in range(37)]
    assert percentile(values, pct) == pytest.approx(float(np.percentile(values, pct)))


def test_percentile_of_small_and_empty_samples() -> None:
    assert percentile([3.0], 95) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([10.0, 0.0, 5.0], 50) == 5.0  # order of the input does not matter
    assert percentile([], 50) is None


@pytest.mark.parametrize("pct", [-1, 100.5])
def test_percentile_rejects_out_of_range(pct: float) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], pct)


def test_ratio_handles_missing_and_zero() -> None:
    assert ratio(300.0, 100.0) == 3.0
    assert ratio(None, 100.0) is None
    assert ratio(300.0, None) is None
    assert ratio(300.0, 0.0) is None


def test_request_figures() -> None:
    done = RequestResult(start=10.0, end=14.0, first_token=10.5, last_token=13.5, tokens=31)
    assert done.ttft == pytest.approx(0.5)
    assert done.itl == pytest.approx(0.1)  # 3 s over the 30 gaps after the first token
    assert done.ok
    single = RequestResult(start=0.0, end=1.0, first_token=0.5, last_token=0.5, tokens=1)
    assert single.itl is None
    waiting = RequestResult(start=0.0, end=7.0, cut=True)
    assert waiting.ttft == 7.0  # never got a token: the wait is a lower bound
    assert not waiting.ok


def test_summarize_a_level() -> None:
    results = [
        RequestResult(start=0.0, end=4.0, first_token=1.0, last_token=4.0, tokens=31),
        RequestResult(start=0.0, end=6.0, first_token=2.0, last_token=6.0, tokens=41),
        RequestResult(start=4.0, end=8.0, first_token=5.0, last_token=8.0, tokens=16),  # cut mid-stream
        RequestResult(start=6.0, end=6.5, error="HTTP 503: queue full"),
    ]
    results[2].cut = True
    stats = summarize("pibloom", 2, results, rss_peak_bytes=123)
    assert (stats.requests, stats.completed, stats.errors, stats.cut) == (4, 2, 1, 1)
    # Tokens of the cut request were served inside the wall time, so they count; the error's do not.
    assert stats.tokens == 88
    assert stats.wall_s == 8.0
    assert stats.tokens_per_s == pytest.approx(11.0)
    assert stats.tokens_per_request == pytest.approx(36.0)  # finished requests only
    assert stats.ttft_p50 == pytest.approx(1.0)  # of 1, 2 and 1 (the cut one's first token came at +1 s)
    assert stats.itl_p50 == pytest.approx(0.1)  # 3/30 and 4/40; the cut request is left out
    assert stats.ttft_is_lower_bound
    assert stats.rss_peak_bytes == 123
    assert stats.error_samples == ["HTTP 503: queue full"]


def test_summarize_nothing_served() -> None:
    stats = summarize("unbatched", 1, [RequestResult(start=0.0, end=1.0, error="ConnectError: refused")])
    assert stats.tokens == 0
    assert stats.tokens_per_s is None
    assert stats.tokens_per_request is None
    assert stats.ttft_p50 is None
