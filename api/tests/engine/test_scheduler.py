"""The engine on tiny BLOOM and Llama models: batching must not change results, and slots must be freed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import torch

from pibloom.engine import scheduler
from pibloom.engine.loader import LoadedModel
from pibloom.engine.request import Event, SamplingParams
from pibloom.engine.scheduler import Engine, QueueFullError

from generation import PROMPTS, greedy, ids, reference, run
from support import wait_for


async def test_greedy_matches_transformers_generate(engine: Engine, model: LoadedModel) -> None:
    for text in PROMPTS[:3]:
        prompt = ids(model, text)
        tokens, _, reason = await run(engine, prompt, greedy(20))
        assert tokens == reference(model, prompt, 20)
        assert reason == "length"


async def test_greedy_output_is_the_same_alone_and_in_a_batch(engine: Engine, model: LoadedModel) -> None:
    prompts = [ids(model, p) for p in PROMPTS]
    alone = [await run(engine, p, greedy(24 + 3 * i)) for i, p in enumerate(prompts)]
    together = await asyncio.gather(*(run(engine, p, greedy(24 + 3 * i)) for i, p in enumerate(prompts)))
    assert [t[0] for t in together] == [a[0] for a in alone]
    assert [t[1] for t in together] == [a[1] for a in alone]


async def test_requests_join_and_leave_a_running_batch(engine: Engine, model: LoadedModel) -> None:
    """Late arrivals join mid-generation (and are longer or shorter than the rows already running)."""
    prompts = [ids(model, p) for p in PROMPTS]
    alone = [(await run(engine, p, greedy(40)))[0] for p in prompts]
    started = asyncio.Event()
    results: dict[int, list[int]] = {}

    async def first() -> None:
        tokens: list[int] = []
        async for event in engine.stream(prompts[0], greedy(40)):
            tokens.extend(event.token_ids)
            if len(tokens) == 5:
                started.set()
        results[0] = tokens

    async def later(i: int) -> None:
        await started.wait()
        results[i] = (await run(engine, prompts[i], greedy(40)))[0]

    await asyncio.gather(first(), *(later(i) for i in range(1, len(prompts))))
    assert [results[i] for i in range(len(prompts))] == alone


async def test_batch_with_many_joins_stays_consistent(engine: Engine, model: LoadedModel) -> None:
    """More requests than slots: queueing, joining, compaction and row moves all exercised."""
    prompts = [ids(model, PROMPTS[i % len(PROMPTS)]) for i in range(14)]
    lengths = [5 + (i * 7) % 30 for i in range(14)]
    expected = [reference(model, p, n) for p, n in zip(prompts, lengths, strict=True)]
    got = await asyncio.gather(*(run(engine, p, greedy(n)) for p, n in zip(prompts, lengths, strict=True)))
    assert [g[0] for g in got] == expected


async def test_same_seed_same_output_and_different_seed_differs(engine: Engine, model: LoadedModel) -> None:
    prompt = ids(model, "Hello")
    params = {"max_tokens": 30, "temperature": 1.0, "ignore_eos": True}
    a = await run(engine, prompt, SamplingParams(seed=7, **params))  # type: ignore[arg-type]
    b = await run(engine, prompt, SamplingParams(seed=7, **params))  # type: ignore[arg-type]
    c = await run(engine, prompt, SamplingParams(seed=8, **params))  # type: ignore[arg-type]
    assert a[0] == b[0]
    assert a[0] != c[0]


async def test_sampling_parameters_take_effect(engine: Engine, model: LoadedModel) -> None:
    prompt = ids(model, "The quick brown fox")
    plain = (await run(engine, prompt, greedy(30)))[0]
    top_k_one = await run(engine, prompt, SamplingParams(max_tokens=30, top_k=1, seed=3, ignore_eos=True))
    assert top_k_one[0] == plain  # top_k=1 is greedy whatever the temperature
    penalised = (await run(engine, prompt, greedy(30, repetition_penalty=5.0)))[0]
    assert penalised != plain
    # A strong penalty makes repeats rarer than in the unpenalised greedy output.
    assert len(set(penalised)) >= len(set(plain))
    narrow = [
        (await run(engine, prompt, SamplingParams(max_tokens=12, top_p=1e-6, seed=s, ignore_eos=True)))[0]
        for s in range(3)
    ]
    assert all(n == plain[:12] for n in narrow)  # a tiny nucleus keeps only the top token


async def test_stop_string_truncates_and_finishes(engine: Engine, model: LoadedModel) -> None:
    prompt = ids(model, "Hello")
    _, full, _ = await run(engine, prompt, greedy(40))
    visible = full.strip()
    assert len(visible) > 8
    stop = visible[len(visible) // 2 : len(visible) // 2 + 2]
    cut = full.index(stop)
    _tokens, text, reason = await run(engine, prompt, greedy(40, stop=(stop,)))
    assert reason == "stop"
    assert text == full[:cut]
    assert stop not in text


async def test_max_tokens_and_eos(engine: Engine, model: LoadedModel) -> None:
    prompt = ids(model, "Hello")
    tokens, _, reason = await run(engine, prompt, greedy(7))
    assert (len(tokens), reason) == (7, "length")


async def test_disconnected_request_is_cancelled_and_its_slot_freed(engine: Engine, model: LoadedModel) -> None:
    prompt = ids(model, "Hello")
    stream: AsyncIterator[Event] = engine.stream(prompt, greedy(10_000))
    for _ in range(3):
        await anext(stream)
    await asyncio.to_thread(wait_for, lambda: engine.load()["running"] == 1, 20.0, "the request to run")
    await stream.aclose()  # what a client disconnect does
    wait_for(lambda: engine.load()["running"] == 0, what="the slot to be freed")
    cancelled = engine.metrics.registry.get_sample_value(
        "pibloom_request_success_total", {"model_name": engine.metrics.model_name, "finished_reason": "cancelled"}
    )
    assert cancelled == 1
    # The engine serves normally afterwards.
    tokens, _, _ = await run(engine, prompt, greedy(5))
    assert tokens == reference(model, prompt, 5)


async def test_bounded_queue_rejects_at_once(model: LoadedModel) -> None:
    engine = Engine(model, max_batch_size=1, max_queue=1)
    engine.start()
    try:
        prompt = ids(model, "Hello")
        running = engine.stream(prompt, greedy(10_000))
        await anext(running)  # occupies the only slot
        waiting = asyncio.ensure_future(run(engine, prompt, greedy(3)))
        await asyncio.to_thread(wait_for, lambda: engine.load()["waiting"] == 1)
        with pytest.raises(QueueFullError):
            await anext(engine.stream(prompt, greedy(3)))
        await running.aclose()
        tokens, _, _ = await waiting  # the queued request is served once the slot frees
        assert len(tokens) == 3
    finally:
        engine.shutdown(10)


async def test_unbatched_engine_serves_one_at_a_time(model: LoadedModel) -> None:
    engine = Engine(model, max_batch_size=8, batching=False)
    engine.start()
    try:
        prompts = [ids(model, p) for p in PROMPTS[:3]]
        got = await asyncio.gather(*(run(engine, p, greedy(10)) for p in prompts))
        assert [g[0] for g in got] == [reference(model, p, 10) for p in prompts]
        registry = engine.metrics.registry
        labels = {"model_name": engine.metrics.model_name}
        steps = registry.get_sample_value("pibloom_batch_size_count", labels)
        assert steps and registry.get_sample_value("pibloom_batch_size_sum", labels) == steps  # every step had 1 row
    finally:
        engine.shutdown(10)


async def test_decode_steps_let_the_output_layer_rank_coarsely_only_when_every_row_wants_just_the_argmax(
    model: LoadedModel,
) -> None:
    """A 4-bit ranking (`output_head`) is only for steps whose rows all take the largest logit and read
    nothing else: one sampled, penalised, biased or logprob row makes the whole step exact."""
    seen: list[bool] = []
    rows: list[int] = []
    exact_forward = model.forward

    def recording(*args: object, argmax_only: bool = False, **kwargs: object) -> torch.Tensor:
        ids = args[0]
        assert isinstance(ids, torch.Tensor)
        if ids.shape[1] == 1:  # decode steps: one token per row
            seen.append(argmax_only)
            rows.append(ids.shape[0])
        return exact_forward(*args, argmax_only=argmax_only, **kwargs)  # type: ignore[arg-type]

    eng = Engine(replace(model, forward=recording), max_batch_size=8, max_queue=8, prefill_chunk=16)  # type: ignore[arg-type]
    eng.start()
    try:
        prompt = ids(model, "The quick brown fox")
        for params, coarse in [
            (greedy(4), True),
            (SamplingParams(max_tokens=4, top_k=1, seed=1, ignore_eos=True), True),
            (SamplingParams(max_tokens=4, temperature=0.7, seed=1, ignore_eos=True), False),
            (greedy(4, repetition_penalty=1.3), False),
            (greedy(4, presence_penalty=0.5), False),
            (greedy(4, logit_bias=((5, 1.0),)), False),
            (greedy(4, logprobs=2), False),
        ]:
            seen.clear()
            await run(eng, prompt, params)
            assert seen and set(seen) == {coarse}, params
        seen.clear()  # one exact row among greedy ones: the steps they share are exact
        rows.clear()
        await asyncio.gather(run(eng, prompt, greedy(6)), run(eng, prompt, greedy(6, logprobs=1)))
        shared = [coarse for coarse, count in zip(seen, rows, strict=True) if count == 2]
        assert shared and not any(shared)
    finally:
        eng.shutdown(10)


async def test_the_heap_goes_back_to_the_system_once_the_engine_has_idled_after_work(
    model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a second without work, with nothing running (a burst's close requests do not pay for it),
    and again once later work has run."""
    trims: list[int] = []
    trimmed = threading.Event()

    def counting() -> None:
        trims.append(engine.load()["running"])
        trimmed.set()

    monkeypatch.setattr(scheduler, "return_freed", counting)
    engine = Engine(model, max_batch_size=8, max_queue=8, prefill_chunk=16)
    engine.start()
    try:
        prompt = ids(model, "Hello")
        await asyncio.gather(*(run(engine, prompt, greedy(8)) for _ in range(3)))
        assert await asyncio.to_thread(trimmed.wait, 30)
        assert trims == [0]  # nothing was running when it trimmed
        trimmed.clear()
        tokens, _, _ = await run(engine, prompt, greedy(5))  # and again after the next request
        assert tokens == reference(model, prompt, 5)
        assert await asyncio.to_thread(trimmed.wait, 30)
        assert trims == [0, 0]
    finally:
        engine.shutdown(10)
