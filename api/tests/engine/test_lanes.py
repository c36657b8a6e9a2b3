"""Lanes: a long row decodes in a slot cache of its own, so short rows are neither padded to its
length nor attend over it, and the memory it took comes back when it leaves."""

from __future__ import annotations

import asyncio

import torch
from transformers import DynamicCache

from pibloom.engine.kv_cache import SlotCache
from pibloom.engine.loader import LoadedModel
from pibloom.engine.scheduler import Engine

from generation import greedy, ids, reference, run

LONG = " ".join(["Raspberry Pi clusters run microk8s with ARM64 nodes."] * 40)


def prefill_cache(layers: int, rows: int, tokens: int) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(layers):
        cache.update(torch.randn(rows, 2, tokens, 8), torch.randn(rows, 2, tokens, 8), layer)
    return cache


def test_buffers_grow_with_the_rows_and_shrink_when_a_long_row_leaves() -> None:
    cache = SlotCache(2, max_rows=32)
    cache.reset(600)
    cache.insert(0, prefill_cache(2, 1, 600), 0, 600)
    layer = cache.layers[0]
    assert layer.row_capacity == 1  # not max_rows, nor a spare row: memory follows the rows actually held
    assert layer.capacity >= 600
    big = cache.nbytes
    # The long row leaves; a short one is all that is left.
    cache.set_rows(0)
    cache.reset(20)
    cache.insert(0, prefill_cache(2, 1, 20), 0, 20)
    cache.fit()
    assert layer.capacity <= 20 + 64 and cache.nbytes < big / 4
    for row in range(1, 9):
        cache.insert(row, prefill_cache(2, 1, 20), 0, 20)
    assert layer.row_capacity == 10  # grown two rows at a time
    # Back to one row: one row's memory again.
    cache.set_rows(1)
    cache.fit()
    assert layer.row_capacity == 1
    assert torch.equal(cache.buffers(0, 9)[0][0, :, :20], cache.layers[0].keys[0, :, :20])


async def test_a_long_row_decodes_in_its_own_lane_and_every_row_stays_exact(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama, max_batch_size=8, max_queue=8, prefill_chunk=512)
    engine.start()
    try:
        long_prompt = ids(tiny_llama, LONG)[:500]
        assert len(long_prompt) > 400
        short = [ids(tiny_llama, text) for text in ("Hello", "The quick brown fox", "piBLOOM serves")]
        lanes: list[int] = []

        async def watch() -> None:
            # The engine publishes how many lanes are busy after every step.
            while True:
                lanes.append(engine.load()["lanes"])
                await asyncio.sleep(0.001)

        watcher = asyncio.ensure_future(watch())
        results = await asyncio.gather(*(run(engine, p, greedy(24)) for p in [*short, long_prompt]))
        watcher.cancel()
        for prompt, (tokens, _, _) in zip([*short, long_prompt], results, strict=True):
            assert tokens == reference(tiny_llama, prompt, 24)
        assert max(lanes) == 2  # the short rows in one lane, the long one in another
        await asyncio.to_thread(engine.wait_idle, 10.0)
        # Everything left: no lane keeps the long row's buffers.
        assert all(lane.cache.layers[0].capacity <= 128 for lane in engine._lanes)
    finally:
        engine.shutdown(10)


async def test_transformers_forward_keeps_one_lane(tiny_loaded: LoadedModel) -> None:
    engine = Engine(tiny_loaded, max_batch_size=4, max_queue=4, prefill_chunk=512)
    engine.start()
    try:
        prompts = [ids(tiny_loaded, LONG)[:300], ids(tiny_loaded, "Hello")]
        results = await asyncio.gather(*(run(engine, p, greedy(8)) for p in prompts))
        for prompt, (tokens, _, _) in zip(prompts, results, strict=True):
            assert tokens == reference(tiny_loaded, prompt, 8)
        assert len(engine._lanes) == 1
    finally:
        engine.shutdown(10)
