"""Overload: far more concurrent streams than batch slots plus queue. Each gets a whole answer or a
refusal that comes fast (compared with how long an answer takes), none hangs, and the service serves
normally right after."""

from __future__ import annotations

import asyncio
import statistics

import httpx
import pytest
from streams import metric, run_stream, stream_body

from support import ServerFactory, wait_for

CLIENTS = 40
MAX_TOKENS = 400
# Generous: only a hang would reach it.
HANG_TIMEOUT = 180


@pytest.mark.parametrize("rate_limit", [None, "10/minute"], ids=["queue-only", "rate-limited"])
async def test_overload_gets_answers_or_fast_refusals(server_factory: ServerFactory, rate_limit: str | None) -> None:
    with server_factory(max_batch_size=2, max_queue=2, rate_limit=rate_limit) as (url, host):
        engine = host.engine
        assert engine is not None
        body = stream_body("Tell me about the sea.", MAX_TOKENS)
        limits = httpx.Limits(max_connections=CLIENTS + 8, max_keepalive_connections=CLIENTS + 8)
        async with httpx.AsyncClient(timeout=HANG_TIMEOUT, limits=limits) as client:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(run_stream(client, url, body) for _ in range(CLIENTS))), HANG_TIMEOUT
            )
            answered = [o for o in outcomes if o.status == 200]
            refused = [o for o in outcomes if o.status != 200]

            # Nothing else than a whole answer or a refusal with advice on when to retry.
            assert len(answered) >= 2 + 2  # the batch and the queue are used in full
            assert refused, "40 clients cannot all fit in 2 slots + 2 queue places"
            reference = answered[0].text
            for o in answered:
                assert o.complete and o.finish_reason == "length"
                assert o.text == reference  # greedy: the same answer whatever else was running
            for o in refused:
                assert o.status in (503, 429)
                assert int(o.headers["retry-after"]) >= 1
                assert o.error is not None
                expected = "server_overloaded" if o.status == 503 else "rate_limit_exceeded"
                assert o.error["code"] == expected
            if rate_limit:
                assert len(answered) <= 10
                assert any(o.status == 429 for o in refused)

            # Refusals are immediate: every one came back before even the quickest answer was complete
            # (answers are long enough that generating them dominates connection handling).
            slowest_refusal = max(o.seconds for o in refused)
            quickest_answer = min(o.seconds for o in answered)
            assert slowest_refusal < quickest_answer, (slowest_refusal, quickest_answer)

            # Right after, the service is idle and serves normally.
            wait_for(lambda: engine.in_flight == 0, what="the engine to be idle")
            assert metric(url, "pibloom_num_requests_running") == 0
            assert metric(url, "pibloom_num_requests_waiting") == 0
            if not rate_limit:
                # A new connection: the pooled ones may have outlived the server's keep-alive meanwhile.
                async with httpx.AsyncClient(timeout=HANG_TIMEOUT) as fresh:
                    after = await run_stream(fresh, url, body)
                assert after.complete and after.text == reference
                # Not slower than the answers during the overload (within CPU noise on a shared host).
                assert after.seconds < 3 * statistics.median(o.seconds for o in answered)
