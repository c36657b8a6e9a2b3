"""Past the KV memory budget: twelve chats with prompts of 10 to 186 words against a server whose
budget holds a few of them. Every request gets its whole answer (they wait instead of allocating),
the cache never holds more than the budget, and a request that could never fit gets a 400."""

from __future__ import annotations

import asyncio

import httpx
from streams import metric, run_stream

from support import ServerFactory

BUDGET_MB = 2
TIMEOUT = 180


def chat(words: int, max_tokens: int) -> dict[str, object]:
    content = " ".join(["the quick brown fox jumps over the lazy dog"] * (words // 9 + 1)).split()[:words]
    return {
        "model": "tiny-bloom",
        "messages": [{"role": "user", "content": " ".join(content)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }


async def test_load_past_the_budget_waits_and_nothing_is_lost(server_factory: ServerFactory) -> None:
    with server_factory(kv_cache_mb=BUDGET_MB, max_batch_size=8, max_queue=16) as (url, host):
        engine = host.engine
        assert engine is not None and engine.kv_budget_tokens is not None
        budget_bytes = metric(url, "pibloom_kv_cache_budget_bytes")
        assert budget_bytes == BUDGET_MB << 20
        held: list[float] = []
        done = asyncio.Event()

        async def sample() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                while not done.is_set():
                    text = (await client.get(f"{url}/metrics")).text
                    for line in text.splitlines():
                        if line.startswith("pibloom_kv_cache_bytes{"):
                            held.append(float(line.split()[1]))
                    await asyncio.sleep(0.02)

        sampler = asyncio.ensure_future(sample())
        sizes = [10 + 16 * i for i in range(12)]  # 10 .. 186 words: one or two fit the budget at a time
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            outcomes = await asyncio.wait_for(
                asyncio.gather(*(run_stream(client, url, chat(words, 48)) for words in sizes)), TIMEOUT
            )
            done.set()
            await sampler
            assert [o.status for o in outcomes] == [200] * len(sizes)
            assert all(o.events[-1] == "[DONE]" and o.finish_reason in ("stop", "length") for o in outcomes)
            assert held and max(held) <= budget_bytes


async def test_a_request_that_could_never_fit_is_refused_by_name(server_factory: ServerFactory) -> None:
    with server_factory(kv_cache_mb=1) as (url, host):
        engine = host.engine
        assert engine is not None and engine.kv_budget_tokens is not None
        assert engine.kv_budget_tokens < host.loaded.max_context  # type: ignore[union-attr]
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            too_big = await client.post(
                f"{url}/v1/chat/completions", json={**chat(10, engine.kv_budget_tokens), "stream": False}
            )
            assert too_big.status_code == 400
            error = too_big.json()["error"]
            assert error["code"] == "kv_budget_exceeded" and error["param"] == "max_tokens"
            assert "PIBLOOM_KV_CACHE_MB" in error["message"]
            fits = await client.post(f"{url}/v1/chat/completions", json={**chat(10, 16), "stream": False})
            assert fits.status_code == 200
