"""The load generator against a real server on the tiny model: one short closed-loop level."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pibloom.bench.load import LoadSpec, chunk_text, model_id, payload, run_level
from pibloom.bench.prompts import PROMPTS, WARM_PROMPTS, prompt_for
from pibloom.bench.stats import summarize


def test_a_short_level_against_a_real_server(base_url: str) -> None:
    model = asyncio.run(model_id(base_url))
    spec = LoadSpec(concurrency=2, requests=4, max_tokens=5, deadline_s=60)
    results = asyncio.run(run_level(base_url, model, spec))
    assert len(results) == 4
    for result in results:
        assert result.ok, result.error
        assert 1 <= result.tokens <= 5
        assert result.start <= result.first_token <= result.last_token <= result.end
    # The count comes from the server's usage: compare with a plain request for the same prompt.
    plain = httpx.post(
        f"{base_url}/v1/chat/completions",
        json={**payload(model, prompt_for(0), 5, "chat"), "stream": False, "stream_options": None},
        timeout=60,
    ).json()
    assert results[0].tokens == plain["usage"]["completion_tokens"]
    stats = summarize("pibloom", 2, results)
    assert stats.completed == 4 and stats.errors == 0
    assert stats.tokens_per_s is not None and stats.tokens_per_s > 0
    assert stats.ttft_p50 is not None and stats.ttft_p50 <= stats.wall_s


def test_completions_endpoint_and_a_rejected_model(base_url: str) -> None:
    model = asyncio.run(model_id(base_url))
    ok = asyncio.run(run_level(base_url, model, LoadSpec(1, 1, 4, 60, api="completions")))
    assert ok[0].ok and 1 <= ok[0].tokens <= 4
    refused = asyncio.run(run_level(base_url, "no-such-model", LoadSpec(1, 2, 4, 60)))
    assert len(refused) == 2
    assert all(r.error is not None and r.error.startswith("HTTP 404") for r in refused)


def test_chunk_text_of_both_shapes() -> None:
    assert chunk_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert chunk_text({"choices": [{"text": "yo"}]}) == "yo"
    assert chunk_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_prompts_repeat_in_order() -> None:
    assert prompt_for(0) == PROMPTS[0]
    assert prompt_for(len(PROMPTS) + 1) == PROMPTS[1]
    assert prompt_for(5, WARM_PROMPTS) == WARM_PROMPTS[1]
    assert not set(WARM_PROMPTS) & set(PROMPTS)  # warming up must not fill a prompt cache for the real run
    with pytest.raises(ValueError, match="at least one prompt"):
        LoadSpec(1, 1, 1, 1.0, prompts=())


@pytest.mark.parametrize("bad", [{"concurrency": 0}, {"requests": 0}, {"max_tokens": 0}, {"deadline_s": 0}])
def test_load_spec_rejects_non_positive(bad: dict[str, float]) -> None:
    args = {"concurrency": 1, "requests": 1, "max_tokens": 1, "deadline_s": 1.0, **bad}
    with pytest.raises(ValueError, match="must be positive"):
        LoadSpec(**args)  # type: ignore[arg-type]
