"""Half of many streams dropped mid-generation: their slots are freed (metrics show it) and the rest
finish with the same text as when each runs alone (greedy, float32: batch-independent)."""

from __future__ import annotations

import asyncio

import httpx
from streams import metric, run_stream, stream_body

from support import ServerFactory, wait_for

PROMPTS = [f"Story number {i}: once upon a time" for i in range(8)]
SURVIVOR_TOKENS = 150
DROPPED_TOKENS = 800  # far from done when dropped
TIMEOUT = 180


async def drop_after(client: httpx.AsyncClient, url: str, body: dict[str, object], events: int) -> int:
    """Read `events` SSE events, then hang up mid-stream; returns the events seen."""
    seen = 0
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= events:
                break
    return seen


async def test_dropped_streams_free_their_slots_and_the_rest_are_unaffected(server_factory: ServerFactory) -> None:
    with server_factory(max_batch_size=8, max_queue=8) as (url, host):
        engine = host.engine
        assert engine is not None
        survivors = PROMPTS[1::2]
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            alone = [(await run_stream(client, url, stream_body(p, SURVIVOR_TOKENS))).text for p in survivors]
            cancelled_before = metric(url, "pibloom_request_success_total", {"finished_reason": "cancelled"})

            kept = [run_stream(client, url, stream_body(p, SURVIVOR_TOKENS)) for p in survivors]
            dropped = [drop_after(client, url, stream_body(p, DROPPED_TOKENS), 3) for p in PROMPTS[0::2]]
            results = await asyncio.wait_for(asyncio.gather(*kept, *dropped), TIMEOUT)

        outcomes = results[: len(survivors)]
        for outcome, expected in zip(outcomes, alone, strict=True):
            assert outcome.complete and outcome.finish_reason == "length"
            assert outcome.text == expected
        assert results[len(survivors) :] == [3, 3, 3, 3]

        wait_for(lambda: engine.in_flight == 0, timeout=30, what="the dropped streams to be cancelled")
        wait_for(lambda: metric(url, "pibloom_num_requests_running") == 0, what="the running gauge to reach 0")
        cancelled = metric(url, "pibloom_request_success_total", {"finished_reason": "cancelled"}) - cancelled_before
        assert cancelled == len(PROMPTS[0::2])
        assert metric(url, "pibloom_num_requests_waiting") == 0
