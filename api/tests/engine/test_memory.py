"""The KV memory budget: derived from the container limit, kept by admission (requests wait instead
of allocating), and a request that could never fit is refused at once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from pibloom.engine.kv_cache import allocation_bound
from pibloom.engine.loader import LoadedModel
from pibloom.engine.memory import DEFAULT_BUDGET, container_memory_limit, kv_budget, kv_bytes_per_token
from pibloom.engine.scheduler import Engine, TooLargeError

from generation import greedy, ids, reference, run


def test_bytes_per_token_follow_the_model_shape(tiny_llama: LoadedModel) -> None:
    config = tiny_llama.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    expected = config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 4
    assert kv_bytes_per_token(config, torch.float32) == expected
    assert kv_bytes_per_token(config, torch.bfloat16) == expected // 2


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"memory.max": "2147483648\n"}, 2 << 30),
        ({"memory.max": "max\n"}, None),
        ({"memory/memory.limit_in_bytes": "1073741824"}, 1 << 30),
        ({"memory/memory.limit_in_bytes": "9223372036854771712"}, None),  # cgroup v1's "unlimited"
        ({}, None),
    ],
)
def test_container_limit_from_cgroup_v2_and_v1(tmp_path: Path, files: dict[str, str], limit: int | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert container_memory_limit(tmp_path) == limit


def test_budget_from_setting_limit_or_default() -> None:
    assert kv_budget(300, 256, 2 << 30, 700 << 20) == 300 << 20
    assert kv_budget(None, 256, None, 700 << 20) == DEFAULT_BUDGET
    derived = kv_budget(None, 256, 2 << 30, 700 << 20)
    assert derived == int((2048 - 700) * 0.6 * 2**20) - (256 << 20)
    assert kv_budget(None, 256, 800 << 20, 700 << 20) == 32 << 20  # never below the floor


async def test_requests_past_the_budget_wait_and_all_complete(tiny_llama: LoadedModel) -> None:
    per_token = kv_bytes_per_token(tiny_llama.model.config, tiny_llama.dtype)
    prompts = [ids(tiny_llama, text) for text in ("Hello", "The quick brown fox", "piBLOOM serves", "Raspberry")]
    need = max(len(p) for p in prompts) + 16
    # Room for one request at a time, not two.
    engine = Engine(
        tiny_llama, max_batch_size=8, max_queue=8, kv_budget_bytes=int(allocation_bound(1, need, 8) * per_token * 1.5)
    )
    engine.start()
    running: list[int] = []

    async def watch() -> None:
        while True:
            running.append(engine.load()["running"] + engine.load()["prefilling"])
            await asyncio.sleep(0.001)

    watcher = asyncio.ensure_future(watch())
    try:
        results = await asyncio.gather(*(run(engine, p, greedy(16)) for p in prompts))
        for prompt, (tokens, _, _) in zip(prompts, results, strict=True):
            assert tokens == reference(tiny_llama, prompt, 16)
        assert max(running) == 1
        with pytest.raises(TooLargeError, match="PIBLOOM_KV_CACHE_MB"):
            await run(engine, prompts[0], greedy(10 * need))
    finally:
        watcher.cancel()
        engine.shutdown(10)


@pytest.mark.parametrize("model", ["tiny_llama", "tiny_loaded"])  # four lanes; transformers' one cache
@pytest.mark.parametrize(
    ("words", "max_tokens"),
    [
        ([10 + 16 * i for i in range(12)], 48),  # short to long: lanes pad and shift right
        ([200 - 15 * i for i in range(12)], 30),  # long first: the longest row is alone at the start
    ],
)
async def test_the_buffers_never_outgrow_the_budget_at_any_step(
    model: str, words: list[int], max_tokens: int, request: pytest.FixtureRequest
) -> None:
    loaded: LoadedModel = request.getfixturevalue(model)
    per_token = kv_bytes_per_token(loaded.model.config, loaded.dtype)
    text = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"] * 40
    prompts = [ids(loaded, " ".join(text[:n])) for n in words]
    budget = 1000 * per_token  # the longest (~530 tokens + reply) fits alone, two or three short ones together
    engine = Engine(loaded, max_batch_size=8, max_queue=16, kv_budget_bytes=budget)
    held: list[int] = []
    rows: list[int] = []
    iteration = engine._iteration

    def recorded() -> None:  # the buffers' size after every step, not a sample of them
        iteration()
        held.append(engine.kv_bytes)
        rows.append(len(engine._running))

    engine._iteration = recorded  # type: ignore[method-assign]
    engine.start()
    try:
        results = await asyncio.gather(*(run(engine, p, greedy(max_tokens)) for p in prompts))
        assert all(0 < len(tokens) <= max_tokens for tokens, _, _ in results)
        assert max(held) <= budget
        assert max(rows) > 1  # the budget let several run together: it was kept, not side-stepped
    finally:
        engine.shutdown(10)
