"""Automatic prefix caching: a later request that starts with a finished sequence's tokens skips
their prefill, and greedy output is exactly what it is without reuse."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from pibloom.engine.kv_cache import GrowingCache
from pibloom.engine.loader import LoadedModel
from pibloom.engine.prefix_cache import PrefixCache, common_prefix
from pibloom.engine.request import SamplingParams
from pibloom.engine.scheduler import Engine
from pibloom.metrics import Metrics

from generation import greedy, ids, reference, run

LAYERS = 2
MODEL = {"model_name": "unknown"}  # an engine's own Metrics, never bound to a model name


def kv(tokens: int, value: float = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    keys = [torch.full((2, tokens, 4), value) for _ in range(LAYERS)]
    return keys, [k.clone() for k in keys]


def test_common_prefix() -> None:
    assert common_prefix(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4, 5])) == 2
    assert common_prefix(torch.tensor([1, 2]), torch.tensor([1, 2, 3])) == 2
    assert common_prefix(torch.tensor([9]), torch.tensor([1])) == 0


def test_lookup_finds_the_longest_match_and_leaves_the_last_token_to_prefill() -> None:
    cache = PrefixCache(1 << 20, min_tokens=2)
    cache.store(list(range(10)), *kv(10))
    cache.store([0, 1, 2, 3, 99, 98], *kv(6))
    hit = cache.lookup(list(range(8)))
    assert hit is not None and hit.length == 7 and len(hit.entry) == 10  # 8 match, one left to prefill
    hit = cache.lookup([0, 1, 2, 3, 99, 98, 97])
    assert hit is not None and hit.length == 6
    assert cache.lookup([5, 6, 7]) is None


def test_short_matches_are_not_reused() -> None:
    cache = PrefixCache(1 << 20, min_tokens=16)
    cache.store(list(range(40)), *kv(40))
    assert cache.lookup([*list(range(10)), 77]) is None
    hit = cache.lookup([*list(range(20)), 77])
    assert hit is not None and hit.length == 20


def test_memory_is_bounded_and_evicted_least_recently_used() -> None:
    per_entry = 2 * LAYERS * 2 * 20 * 4 * 4  # keys and values, layers, heads x tokens x dim float32
    metrics = Metrics()
    cache = PrefixCache(per_entry * 2, min_tokens=2, metrics=metrics)
    first, second, third = ([n] * 20 for n in (1, 2, 3))
    cache.store(first, *kv(20))
    cache.store(second, *kv(20))
    assert cache.lookup([*first, 5]) is not None  # first is now the most recently used
    cache.store(third, *kv(20))
    assert len(cache) == 2 and cache.nbytes <= per_entry * 2
    assert cache.lookup([*second, 5]) is None  # evicted
    assert cache.lookup([*first, 5]) is not None
    assert metrics.registry.get_sample_value("pibloom_prefix_cache_bytes", MODEL) == cache.nbytes
    assert metrics.registry.get_sample_value("pibloom_prefix_cache_hits_total", MODEL) == 40
    assert cache.lookup(list(range(500))) is None  # a query that is longer than any entry
    cache.store(list(range(1000)), *kv(1000))  # larger than the whole budget: not kept
    assert len(cache) == 2


def test_an_entry_that_a_new_one_extends_is_replaced() -> None:
    cache = PrefixCache(1 << 20, min_tokens=2)
    cache.store(list(range(10)), *kv(10))
    cache.store(list(range(15)), *kv(15))
    assert len(cache) == 1


@pytest.fixture
def reusing(model: LoadedModel) -> Iterator[Engine]:
    eng = Engine(model, max_batch_size=8, max_queue=8, prefill_chunk=16, prefix_cache_bytes=64 << 20)
    eng.start()
    yield eng
    eng.shutdown(10)


async def test_next_turn_reuses_the_conversation_with_identical_greedy_output(
    reusing: Engine, model: LoadedModel
) -> None:
    first = ids(model, "The quick brown fox jumps over the lazy dog. Raspberry Pi clusters")
    reply, _, _ = await run(reusing, first, greedy(12))
    hits = reusing.metrics.registry.get_sample_value("pibloom_prefix_cache_hits_total", MODEL)
    assert hits == 0
    # The next turn: the whole conversation so far, then a new question.
    second = first + reply + ids(model, " Hello, how are you today?")
    tokens, _, _ = await run(reusing, second, greedy(16))
    reused = reusing.metrics.registry.get_sample_value("pibloom_prefix_cache_hits_total", MODEL)
    # The first reply's last token was sampled but never fed through the model: all else is reused.
    assert reused == len(first) + len(reply) - 1
    assert tokens == reference(model, second, 16)


async def test_reuse_inside_a_running_batch_keeps_every_row_exact(reusing: Engine, model: LoadedModel) -> None:
    base = ids(model, "Continuous batching lets requests join and leave at every step.")
    reply, _, _ = await run(reusing, base, greedy(8))
    follow_ups = [base + reply + ids(model, tail) for tail in (" Hello", " Numbers 0 1 2", " piBLOOM serves")]
    others = [ids(model, "Raspberry Pi clusters"), ids(model, "El niño comió una manzana.")]

    results = await asyncio.gather(*(run(reusing, p, greedy(10)) for p in follow_ups + others))
    for prompt, (tokens, _, _) in zip(follow_ups + others, results, strict=True):
        assert tokens == reference(model, prompt, 10)
    assert reusing.metrics.registry.get_sample_value("pibloom_prefix_cache_hits_total", MODEL) >= 3 * len(base)


async def test_prompt_logprobs_are_never_served_from_the_cache(reusing: Engine, model: LoadedModel) -> None:
    prompt = ids(model, "The quick brown fox jumps over the lazy dog. The quick brown fox")
    await run(reusing, prompt, greedy(4))
    seen: list[int] = []
    async for event in reusing.stream([*prompt, 5], greedy(2, logprobs=0, prompt_logprobs=True)):
        if event.prompt_logprobs is not None:
            seen.append(len(event.prompt_logprobs))
    assert seen == [len(prompt)]  # every prompt token after the first was scored by a real prefill


async def test_a_prompt_cached_but_for_its_last_token_joins_the_batch_without_a_prefill_pass(
    model: LoadedModel,
) -> None:
    """A repeated prompt (a regenerated reply) is cached up to its last token: that token is fed by the
    next decode step, with the other rows, and the replies are the same tokens as without the cache,
    alone or beside other rows; sampled with a seed, the same draw too."""
    passes: list[tuple[int, int]] = []  # (rows, tokens) of every forward pass not over the batch's lanes
    exact_forward = model.forward

    def recording(*args: Any, **kwargs: Any) -> torch.Tensor:
        ids_in, cache = args[0], args[3]
        if isinstance(cache, GrowingCache):
            passes.append(tuple(ids_in.shape))  # type: ignore[arg-type]
        return exact_forward(*args, **kwargs)  # type: ignore[no-any-return]

    eng = Engine(
        replace(model, forward=recording), max_batch_size=8, max_queue=8, prefill_chunk=16, prefix_cache_bytes=64 << 20
    )
    eng.start()
    try:
        prompt = ids(model, "The quick brown fox jumps over the lazy dog. Raspberry Pi clusters")
        first, _, _ = await run(eng, prompt, greedy(12))
        assert first == reference(model, prompt, 12)
        passes.clear()
        again, _, _ = await run(eng, prompt, greedy(12))
        assert again == first and passes == []  # no forward pass of its own
        other = ids(model, "Numbers 0 1 2 3 4 5 6 7 8 9")
        together = await asyncio.gather(run(eng, prompt, greedy(12)), run(eng, other, greedy(12)))
        assert together[0][0] == first and together[1][0] == reference(model, other, 12)
        sampled = SamplingParams(max_tokens=10, temperature=0.9, seed=7, ignore_eos=True)
        fresh = Engine(model, max_batch_size=8, max_queue=8, prefill_chunk=16)
        fresh.start()
        try:
            uncached = (await run(fresh, prompt, sampled))[0]
        finally:
            fresh.shutdown(10)
        assert (await run(eng, prompt, sampled))[0] == uncached
    finally:
        eng.shutdown(10)
