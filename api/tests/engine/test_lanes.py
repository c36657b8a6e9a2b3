"""Lanes: a long row decodes in a slot cache of its own, so short rows are neither padded to its
length nor attend over it, and the memory it took comes back when it leaves."""

from __future__ import annotations

import asyncio

import pytest
import torch

from pibloom.engine.kv_cache import GrowingCache, SlotCache, SlotLayer
from pibloom.engine.loader import LoadedModel
from pibloom.engine.scheduler import Engine

from generation import greedy, ids, reference, run

LONG = " ".join(["Raspberry Pi clusters run microk8s with ARM64 nodes."] * 40)


def prefill_cache(layers: int, rows: int, tokens: int) -> GrowingCache:
    cache = GrowingCache(layers)
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


def test_rows_joining_together_grow_the_buffers_once_and_spare_rows_stay_until_half_are_empty() -> None:
    cache = SlotCache(2, max_rows=32)
    cache.reset(20)
    cache.insert(0, prefill_cache(2, 1, 20), 0, 20, rows=12)  # eleven more are on their way
    layer = cache.layers[0]
    buffers = layer.keys
    assert layer.row_capacity == 12
    for row in range(1, 12):
        cache.insert(row, prefill_cache(2, 1, 20), 0, 20)
    assert layer.keys is buffers  # no reallocation (and no copy) while they joined
    kept = layer.keys[3, :, :20].clone()
    # Rows leave and join one at a time under a steady load: the buffers stay as long as half are used.
    cache.set_rows(7)
    cache.fit()
    assert layer.keys is buffers
    cache.set_rows(6)
    cache.fit()
    assert layer.row_capacity == 6 and layer.keys is not buffers
    assert torch.equal(layer.keys[3, :, :20], kept)  # what stayed was copied over
    cache.insert(6, prefill_cache(2, 1, 20), 0, 20)  # one more row: two new ones, zeroed
    assert layer.row_capacity == 8
    assert torch.count_nonzero(layer.keys[7]) == 0 and torch.count_nonzero(layer.keys[:6, :, 20:]) == 0


async def test_a_prefill_group_joins_one_lane_with_one_allocation(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(tiny_llama, max_batch_size=8, max_queue=8, prefill_chunk=512)
    sizes: list[int] = []
    allocate = SlotLayer._allocate

    def counted(layer: SlotLayer, rows: int, columns: int) -> None:
        if layer is engine._lanes[0].cache.layers[0]:
            sizes.append(rows)
        allocate(layer, rows, columns)

    monkeypatch.setattr(SlotLayer, "_allocate", counted)
    engine.start()
    try:
        prompts = [ids(tiny_llama, f"Tell me about the number {i}") for i in range(6)]
        await asyncio.gather(*(run(engine, p, greedy(4)) for p in prompts))
    finally:
        engine.shutdown(10)
    # Six prompts of one length, prefilled as one group: the lane is sized for all six at the first join
    # (rows grown two at a time took three allocations).
    assert sizes[0] == 6


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
