"""Scoring, logprobs and tokenization, checked against one plain forward pass of the model."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import openai
import pytest
import torch

from pibloom.engine.loader import LoadedModel
from pibloom.serving.lifecycle import ModelHost
from pibloom.serving.prepare import chat_prompt

MODEL = "tiny-bloom"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello, how are you today?", "Raspberry Pi"]


def direct_logprobs(loaded: LoadedModel, ids: list[int]) -> list[float]:
    """log P(ids[i] | ids[:i]) for i >= 1, from one forward pass and a log-softmax."""
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]


def encode(loaded: LoadedModel, text: str) -> list[int]:
    return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_score_matches_a_direct_forward_pass(base_url: str, tiny_loaded: LoadedModel) -> None:
    response = httpx.post(f"{base_url}/v1/score", json={"text": TEXTS, "logprobs": True}, timeout=60)
    assert response.status_code == 200
    data = response.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    for text, item in zip(TEXTS, data, strict=True):
        ids = [tiny_loaded.bos_token_id, *encode(tiny_loaded, text)]
        expected = direct_logprobs(tiny_loaded, ids)
        assert item["tokens"] == len(ids) - 1
        assert item["logprob"] == pytest.approx(sum(expected), abs=1e-4)
        assert item["mean_logprob"] == pytest.approx(sum(expected) / len(expected), abs=1e-4)
        assert item["perplexity"] == pytest.approx(math.exp(-item["mean_logprob"]), rel=1e-6)
        got = [t["logprob"] for t in item["token_logprobs"]]
        assert got == pytest.approx(expected, abs=1e-4)
        assert [t["id"] for t in item["token_logprobs"]] == ids[1:]


def test_context_is_conditioned_on_but_not_scored(base_url: str, tiny_loaded: LoadedModel) -> None:
    context, text = "User: hi\nAssistant:", " hello there"
    body = {"text": text, "context": context, "logprobs": True, "top_logprobs": 3}
    item = httpx.post(f"{base_url}/v1/score", json=body, timeout=60).json()["data"][0]
    ctx, txt = encode(tiny_loaded, context), encode(tiny_loaded, text)
    expected = direct_logprobs(tiny_loaded, ctx + txt)[len(ctx) - 1 :]
    assert item["tokens"] == len(txt)
    assert item["logprob"] == pytest.approx(sum(expected), abs=1e-4)
    for token in item["token_logprobs"]:
        tops = token["top_logprobs"]
        assert len(tops) == 3
        assert tops[0]["logprob"] >= token["logprob"] - 1e-6
        assert [t["logprob"] for t in tops] == sorted((t["logprob"] for t in tops), reverse=True)


def test_scores_do_not_change_with_what_else_is_in_the_batch(api: tuple[str, ModelHost]) -> None:
    url, _ = api
    alone = [httpx.post(f"{url}/v1/score", json={"text": t}, timeout=60).json()["data"][0]["logprob"] for t in TEXTS]

    async def busy() -> list[float]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            gen = {"model": MODEL, "prompt": "Hello", "max_tokens": 200, "temperature": 0}
            tasks = [asyncio.create_task(client.post("/v1/completions", json=gen)) for _ in range(3)]
            scores = await asyncio.gather(*(client.post("/v1/score", json={"text": t}) for t in TEXTS))
            await asyncio.gather(*tasks)
            return [s.json()["data"][0]["logprob"] for s in scores]

    assert asyncio.run(busy()) == pytest.approx(alone, abs=1e-4)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"text": ""}, "text"),
        ({"text": []}, "text"),
        ({"text": ["ok", ""]}, "text"),
        ({"text": [1, 2]}, "text"),
        ({"text": "The quick brown fox jumps over the lazy dog. " * 150}, "text"),
        ({"text": "hi", "model": "other"}, "model"),
        ({"text": "hi", "top_logprobs": 50}, "top_logprobs"),
    ],
)
def test_bad_score_requests_are_4xx(base_url: str, body: dict[str, object], param: str) -> None:
    response = httpx.post(f"{base_url}/v1/score", json=body, timeout=60)
    assert 400 <= response.status_code < 500
    assert response.json()["error"]["param"] == param


def test_chat_logprobs_match_the_model(base_url: str, api: tuple[str, ModelHost], tiny_loaded: LoadedModel) -> None:
    _, host = api
    messages = [{"role": "user", "content": "Hello"}]
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    data = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
    content = data["choices"][0]["logprobs"]["content"]
    assert len(content) == data["usage"]["completion_tokens"]
    assert host.loaded is not None
    prompt = chat_prompt(host.loaded, [openai_message(m) for m in messages])
    first = direct_next_logprobs(tiny_loaded, prompt)
    assert content[0]["logprob"] == pytest.approx(float(first.max()), abs=1e-4)
    for entry in content:  # greedy: the chosen token is the most likely one
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-5)
        assert entry["bytes"] == list(entry["token"].encode())
    stream = httpx.post(f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    chunks = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    streamed = [
        e
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in content], abs=1e-6)


def openai_message(message: dict[str, str]):  # type: ignore[no-untyped-def]
    from pibloom.http.protocol.common import ChatMessage

    return ChatMessage(**message)  # type: ignore[arg-type]


def direct_next_logprobs(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits = loaded.model(torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1)


def test_official_client_parses_logprobs_and_echo(base_url: str, tiny_loaded: LoadedModel) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content
    assert all(len(t.top_logprobs) == 2 for t in chat.choices[0].logprobs.content)
    prompt = "The quick brown fox"
    text = client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=2, echo=True)
    choice = text.choices[0]
    assert choice.text.startswith(prompt)
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    prompt_ids = encode(tiny_loaded, prompt)
    assert len(logprobs.token_logprobs) == len(prompt_ids) + 3
    assert logprobs.token_logprobs[0] is None
    expected = direct_logprobs(tiny_loaded, prompt_ids)
    assert logprobs.token_logprobs[1 : len(prompt_ids)] == pytest.approx(expected, abs=1e-4)
    assert "".join(logprobs.tokens or []) == choice.text
    assert logprobs.text_offset == sorted(logprobs.text_offset or [])


def test_tokenize_and_detokenize(base_url: str, tiny_loaded: LoadedModel) -> None:
    text = "Hello, how are you today?"
    data = httpx.post(f"{base_url}/tokenize", json={"text": text}).json()
    assert data["tokens"] == encode(tiny_loaded, text)
    assert data["count"] == len(data["tokens"]) and data["max_model_len"] == 1024
    back = httpx.post(f"{base_url}/detokenize", json={"tokens": data["tokens"]}).json()
    assert back["text"] == text
    chat = httpx.post(f"{base_url}/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert chat["text"] == "User: Hi\nAssistant:"
    assert chat["tokens"] == encode(tiny_loaded, "User: Hi\nAssistant:")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/tokenize", {}),
        ("/tokenize", {"text": "a", "messages": [{"role": "user", "content": "b"}]}),
        ("/detokenize", {"tokens": []}),
        ("/detokenize", {"tokens": [10**9]}),
        ("/detokenize", {"tokens": "abc"}),
    ],
)
def test_bad_tokenize_requests_are_4xx(base_url: str, path: str, body: dict[str, object]) -> None:
    response = httpx.post(f"{base_url}{path}", json=body)
    assert 400 <= response.status_code < 500
