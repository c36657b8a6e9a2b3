"""What real OpenAI clients send: unknown fields, optional `model`, aliases, n, penalties, min_p,
logit_bias, stop strings, tools, vLLM's tokenize fields, and the bare health probe."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from pibloom.serving.lifecycle import ModelHost

from support import ServerFactory

USER = [{"role": "user", "content": "Hello there"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]},
    },
}


def chat(url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json={"messages": USER, **body}, timeout=120)


@pytest.fixture(scope="module")
def aliased(server_factory: ServerFactory) -> Iterator[tuple[str, ModelHost]]:
    with server_factory(served_model_names=["gpt-4o-mini", "local"]) as served:
        yield served


def test_unknown_fields_are_ignored_and_logged_once(base_url: str, caplog: pytest.LogCaptureFixture) -> None:
    messages = [{"role": "user", "content": "Hi", "vendor_tag": "x"}]
    body = {"messages": messages, "max_tokens": 2, "some_vendor_field": 1}
    with caplog.at_level(logging.INFO, logger="pibloom.fields"):
        first = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
        second = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert first.status_code == 200 and second.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "pibloom.fields"]
    assert sum("'some_vendor_field'" in line for line in lines) == 1
    assert sum("'messages.vendor_tag'" in line for line in lines) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("audio", {"voice": "alloy"}),
        ("modalities", ["text", "audio"]),
        ("functions", [{"name": "f"}]),
        ("prediction", {}),
    ],
)
def test_known_fields_that_cannot_be_honoured_are_400_by_name(base_url: str, field: str, value: object) -> None:
    response = chat(base_url, **{field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and error["code"] == "unsupported_field" and field in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("modalities", ["text"]),
        ("store", False),
        ("metadata", {"a": "b"}),
        ("service_tier", "auto"),
        ("user", "u1"),
        ("parallel_tool_calls", True),
        ("reasoning_effort", "low"),
        ("tools", []),
    ],
)
def test_accepted_and_ignored_fields(base_url: str, field: str, value: object) -> None:
    assert chat(base_url, max_tokens=2, **{field: value}).status_code == 200


def test_suffix_and_best_of_on_completions(base_url: str) -> None:
    url = f"{base_url}/v1/completions"
    assert httpx.post(url, json={"prompt": "Hi", "suffix": "end"}).json()["error"]["param"] == "suffix"
    assert httpx.post(url, json={"prompt": "Hi", "best_of": 3}).json()["error"]["param"] == "best_of"
    assert httpx.post(url, json={"prompt": "Hi", "best_of": 1, "max_tokens": 2}).status_code == 200


def test_model_may_be_omitted_and_aliases_are_listed(aliased: tuple[str, ModelHost]) -> None:
    url, host = aliased
    ids = [card["id"] for card in httpx.get(f"{url}/v1/models").json()["data"]]
    assert ids == [host.model_name, "gpt-4o-mini", "local"]
    for model in (None, "gpt-4o-mini", "local", host.model_name):
        body = {"max_tokens": 2} | ({"model": model} if model else {})
        assert chat(url, **body).status_code == 200
    assert chat(url, model="other").status_code == 404


def test_model_card_lists_capabilities(base_url: str) -> None:
    card = httpx.get(f"{base_url}/v1/models").json()["data"][0]
    assert {"response_format", "tools", "n", "logprobs"} <= set(card["capabilities"])


def test_n_choices_are_reproducible_per_choice_with_a_seed(base_url: str) -> None:
    body = {"n": 4, "max_tokens": 8, "temperature": 1.0, "seed": 11}
    first = chat(base_url, **body).json()
    again = chat(base_url, **body).json()
    texts = [c["message"]["content"] for c in first["choices"]]
    assert [c["index"] for c in first["choices"]] == [0, 1, 2, 3]
    assert texts == [c["message"]["content"] for c in again["choices"]]
    assert len(set(texts)) > 1  # each choice samples with its own generator
    if all(c["finish_reason"] == "length" for c in first["choices"]):
        assert first["usage"]["completion_tokens"] == 4 * 8  # usage counts every choice
    # Choice 0 of n is the same request as n=1 with the same seed.
    single = chat(base_url, **{**body, "n": 1}).json()["choices"][0]["message"]["content"]
    assert single == texts[0]


def test_n_streams_each_choice_with_its_index(base_url: str) -> None:
    body = {"messages": USER, "n": 3, "max_tokens": 6, "temperature": 0.0, "stream": True}
    texts: dict[int, str] = {}
    finished: set[int] = set()
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
                    if choice["finish_reason"]:
                        finished.add(choice["index"])
    assert finished == {0, 1, 2}
    assert len(set(texts.values())) == 1  # greedy: every choice is the same reply


def test_n_beyond_the_batch_is_a_clear_400(server_factory: ServerFactory) -> None:
    with server_factory(max_batch_size=2) as (url, _host):
        response = chat(url, n=4, max_tokens=50)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "n" and error["code"] == "capacity_exceeded" and "at most 2" in error["message"]


def test_logit_bias_bans_and_forces(base_url: str) -> None:
    greedy = {"max_tokens": 6, "temperature": 0.0}
    tokens = httpx.post(f"{base_url}/v1/completions", json={"prompt": "Hello", **greedy, "logprobs": 0}).json()
    first = tokens["choices"][0]["logprobs"]["tokens"][0]
    first_id = httpx.post(f"{base_url}/tokenize", json={"prompt": first}).json()["tokens"][0]
    banned = httpx.post(
        f"{base_url}/v1/completions",
        json={"prompt": "Hello", **greedy, "logprobs": 0, "logit_bias": {str(first_id): -100}},
    ).json()
    assert first_id not in [
        httpx.post(f"{base_url}/tokenize", json={"prompt": t}).json()["tokens"][0]
        for t in banned["choices"][0]["logprobs"]["tokens"][:1]
    ]
    forced = httpx.post(
        f"{base_url}/v1/completions", json={"prompt": "Hello", **greedy, "logit_bias": {"42": 100}, "max_tokens": 3}
    ).json()
    detok = httpx.post(f"{base_url}/detokenize", json={"tokens": [42, 42, 42], "model": "tiny-bloom"}).json()["text"]
    assert forced["choices"][0]["text"] == detok


def test_logit_bias_out_of_vocabulary_is_400(base_url: str) -> None:
    response = chat(base_url, logit_bias={"999999": 5})
    assert response.status_code == 400 and response.json()["error"]["param"] == "logit_bias"


def test_frequency_penalty_stops_repetition(base_url: str) -> None:
    """Greedy on random weights repeats itself; a strong frequency penalty makes each token rarer."""
    body = {"prompt": "Hello", "max_tokens": 40, "temperature": 0.0, "logprobs": 0}
    plain = httpx.post(f"{base_url}/v1/completions", json=body).json()["choices"][0]["logprobs"]["tokens"]
    penalised = httpx.post(
        f"{base_url}/v1/completions", json={**body, "frequency_penalty": 2.0, "presence_penalty": 2.0}
    ).json()
    tokens = penalised["choices"][0]["logprobs"]["tokens"]
    assert max(tokens.count(t) for t in tokens) < max(plain.count(t) for t in plain)


def test_min_p_one_is_greedy(base_url: str) -> None:
    body = {"prompt": "Hello", "max_tokens": 8}
    greedy = httpx.post(f"{base_url}/v1/completions", json={**body, "temperature": 0.0}).json()["choices"][0]["text"]
    for seed in range(3):
        sampled = httpx.post(
            f"{base_url}/v1/completions", json={**body, "temperature": 1.5, "min_p": 1.0, "seed": seed}
        )
        assert sampled.json()["choices"][0]["text"] == greedy


def test_sixteen_stop_strings(base_url: str) -> None:
    body = {"prompt": "Hello", "max_tokens": 20, "temperature": 0.0}
    text = httpx.post(f"{base_url}/v1/completions", json=body).json()["choices"][0]["text"]
    stops = [f"never{i}" for i in range(15)] + [text[3:6]]
    cut = httpx.post(f"{base_url}/v1/completions", json={**body, "stop": stops}).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == text[: text.index(text[3:6])]


def test_tool_required_gives_a_valid_call(base_url: str) -> None:
    response = chat(base_url, tools=[WEATHER, TIME], tool_choice="required", max_tokens=80, seed=2, temperature=1.0)
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    schema = {"get_weather": WEATHER, "get_time": TIME}[call["function"]["name"]]["function"]["parameters"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), schema)
    assert call["id"].startswith("call_") and call["type"] == "function"


def test_named_tool_choice_calls_that_function_streamed(base_url: str) -> None:
    body = {
        "messages": USER,
        "tools": [WEATHER, TIME],
        "stream": True,
        "max_tokens": 80,
        "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }
    calls = []
    reasons = []
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    calls.extend(choice["delta"].get("tool_calls") or [])
                    reasons.append(choice["finish_reason"])
    assert reasons[-1] == "tool_calls"
    assert [c["function"]["name"] for c in calls] == ["get_time"]
    assert json.loads(calls[0]["function"]["arguments"])["zone"] in ("UTC", "CET")


def test_tool_history_and_unknown_tool_choice(base_url: str) -> None:
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "days": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 20C"},
    ]
    ok = httpx.post(f"{base_url}/v1/chat/completions", json={"messages": history, "tools": [WEATHER], "max_tokens": 4})
    assert ok.status_code == 200
    text = httpx.post(f"{base_url}/tokenize", json={"messages": history}).json()["text"]
    assert "<tool_response>\nSunny, 20C\n</tool_response>" in text and '"name": "get_weather"' in text
    bad = chat(base_url, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tool_choice"


def test_tools_are_in_the_prompt_unless_tool_choice_is_none(base_url: str) -> None:
    """The tiny model's template knows nothing of tools: they arrive in the fallback system prompt."""
    plain = chat(base_url, max_tokens=1).json()["usage"]["prompt_tokens"]
    offered = chat(base_url, tools=[WEATHER], max_tokens=1).json()["usage"]["prompt_tokens"]
    declined = chat(base_url, tools=[WEATHER], tool_choice="none", max_tokens=1).json()["usage"]["prompt_tokens"]
    assert offered > plain and declined == plain


def test_vllm_tokenize_fields(base_url: str) -> None:
    by_prompt = httpx.post(
        f"{base_url}/tokenize", json={"model": "tiny-bloom", "prompt": "Hello", "add_special_tokens": False}
    )
    by_text = httpx.post(f"{base_url}/tokenize", json={"text": "Hello"})
    assert by_prompt.status_code == 200 and by_prompt.json()["tokens"] == by_text.json()["tokens"]
    chat_tokens = httpx.post(f"{base_url}/tokenize", json={"model": "tiny-bloom", "messages": USER})
    assert chat_tokens.status_code == 200 and chat_tokens.json()["count"] > by_text.json()["count"]
    assert httpx.post(f"{base_url}/tokenize", json={"model": "other", "prompt": "Hello"}).status_code == 404
    back = httpx.post(f"{base_url}/detokenize", json={"model": "tiny-bloom", "tokens": by_text.json()["tokens"]})
    assert back.json()["text"] == "Hello"


def test_bare_health(base_url: str) -> None:
    response = httpx.get(f"{base_url}/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_max_completion_tokens_and_top_k_and_repetition_penalty(base_url: str) -> None:
    body = {"max_completion_tokens": 3, "temperature": 0.0, "top_k": 5, "repetition_penalty": 1.3}
    answer = chat(base_url, **body).json()
    assert answer["usage"]["completion_tokens"] <= 3
    assert answer["choices"][0]["finish_reason"] in ("length", "stop")


def test_n_needs_batching(server_factory: ServerFactory) -> None:
    """Without batching the engine holds one row: n=2 cannot run and is refused, not queued forever."""
    with server_factory(batching=False) as (url, _host):
        response = chat(url, n=2, max_tokens=4)
        assert chat(url, max_tokens=2).status_code == 200
    assert response.status_code == 400 and "at most 1 sequences" in response.json()["error"]["message"]
