"""The HTTP API over a real server on the tiny model: shapes, streaming, probes and metrics."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import jsonschema
import openai
import pytest
from starlette.requests import Request

from pibloom.engine.loader import LoadedModel, ModelLoadError
from pibloom.engine.request import SamplingParams
from pibloom.http.disconnect import until_disconnect
from pibloom.http.protocol.common import ChatMessage
from pibloom.serving.execute import Generation
from pibloom.serving.lifecycle import ModelHost
from pibloom.serving.prepare import Prepared, chat_prompt
from pibloom.settings import Settings

from support import ServerFactory, wait_for

MODEL = "tiny-bloom"


def chat_body(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}
    body.update(extra)
    return body


def sse_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]


def test_original_chat_endpoint(base_url: str) -> None:
    response = httpx.post(f"{base_url}/chat/", json={"content": "Hello there"}, timeout=60)
    assert response.status_code == 200
    assert set(response.json()) == {"data"}
    assert isinstance(response.json()["data"], str)


@pytest.mark.parametrize("body", [{"content": ""}, {"content": "   "}, {}, {"content": 5}])
def test_original_chat_rejects_empty_or_wrong_content_with_422(base_url: str, body: dict[str, object]) -> None:
    response = httpx.post(f"{base_url}/chat/", json=body, timeout=10)
    assert response.status_code == 422
    assert "detail" in response.json()


def test_chat_completion_shape_and_usage(base_url: str, api: tuple[str, ModelHost]) -> None:
    response = httpx.post(f"{base_url}/v1/chat/completions", json=chat_body(max_tokens=9, temperature=0), timeout=60)
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == MODEL
    choice = data["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    tokenizer = api[1].loaded.tokenizer  # type: ignore[union-attr]
    usage = data["usage"]
    assert usage["completion_tokens"] <= 9
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    expected_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, tokenize=False
    )
    assert usage["prompt_tokens"] == len(tokenizer(expected_prompt, add_special_tokens=False)["input_ids"])


def test_chat_stream_is_sse_ending_with_done_and_matches_non_stream(base_url: str) -> None:
    body = chat_body(max_tokens=12, temperature=0)
    whole = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
    response = httpx.post(f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_text_completion_and_stream(base_url: str) -> None:
    body = {"model": MODEL, "prompt": "The quick brown fox", "max_tokens": 10, "temperature": 0}
    whole = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).json()
    assert whole["object"] == "text_completion"
    assert whole["usage"]["completion_tokens"] == 10
    response = httpx.post(
        f"{base_url}/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
        timeout=60,
    )
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]) == whole["choices"][0]["text"]


def test_completion_defaults_to_16_tokens_like_openai(base_url: str) -> None:
    body = {"model": MODEL, "prompt": "Hello", "temperature": 0}
    data = httpx.post(f"{base_url}/v1/completions", json=body, timeout=60).json()
    assert data["usage"]["completion_tokens"] == 16


def test_models_list(base_url: str) -> None:
    data = httpx.get(f"{base_url}/v1/models").json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == [MODEL]
    assert data["data"][0]["max_model_len"] == 1024


def test_official_openai_client_works_unchanged(base_url: str) -> None:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, temperature=0
    )
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.completion_tokens <= 8
    pieces = []
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == reply.choices[0].message.content
    text = client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0)
    assert text.choices[0].finish_reason == "length"
    assert [m.id for m in client.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "Hi"}])


def test_health_probes_ready(base_url: str) -> None:
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        assert httpx.get(f"{base_url}{path}").status_code == 200, path
    assert httpx.get(f"{base_url}/v2/models/{MODEL}/ready").status_code == 200
    assert httpx.get(f"{base_url}/v2/models/other/ready").status_code == 404
    assert httpx.get(f"{base_url}/health/ready").json()["status"] == "ok"


def test_readiness_is_503_until_the_model_is_loaded(server_factory: ServerFactory, tiny_loaded: LoadedModel) -> None:
    release = threading.Event()

    def slow_loader(settings: Settings) -> LoadedModel:
        release.wait(30)
        return tiny_loaded

    with server_factory(loader=slow_loader) as (url, _host):
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert ready.json()["status"] == "loading"
        assert httpx.get(f"{url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{url}/health/live").status_code == 200  # loading is alive
        response = httpx.post(f"{url}/v1/chat/completions", json=chat_body())
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_loading"
        release.set()
        wait_for(lambda: httpx.get(f"{url}/health/ready").status_code == 200, what="readiness")
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=2)).status_code == 200


def test_liveness_fails_when_the_model_cannot_load(server_factory: ServerFactory) -> None:
    def broken(settings: Settings) -> LoadedModel:
        raise ModelLoadError("no such model")

    with server_factory(loader=broken) as (url, host):
        wait_for(lambda: host.load_error is not None, what="the load to fail")
        live = httpx.get(f"{url}/health/live")
        assert live.status_code == 503
        assert "no such model" in live.json()["detail"]


def test_readiness_is_503_while_draining(server_factory: ServerFactory) -> None:
    with server_factory() as (url, host):
        assert httpx.get(f"{url}/health/ready").status_code == 200
        host.draining = True
        assert httpx.get(f"{url}/health/ready").status_code == 503
        assert httpx.get(f"{url}/health/ready").json()["status"] == "draining"
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body()).status_code == 503


def test_metrics_exposes_the_serving_figures(base_url: str) -> None:
    httpx.post(f"{base_url}/v1/chat/completions", json=chat_body(max_tokens=4), timeout=60)
    text = httpx.get(f"{base_url}/metrics").text
    for name in (
        "pibloom_time_to_first_token_seconds_bucket",
        "pibloom_inter_token_latency_seconds_bucket",
        "pibloom_num_requests_waiting",
        "pibloom_num_requests_running",
        "pibloom_batch_size_bucket",
        "pibloom_generation_tokens_total",
        'pibloom_request_duration_seconds_count{method="POST",route="/v1/chat/completions",status="200"}',
    ):
        assert name in text, name


def test_docs_and_openapi(base_url: str) -> None:
    assert httpx.get(f"{base_url}/docs").status_code == 200
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    assert {"/chat/", "/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(paths)


def test_stream_events_match_the_published_per_event_schema(base_url: str) -> None:
    """The schema describes one event of a `stream: true` answer (what schemathesis validates each
    parsed event against), not the stream as one string."""
    paths = httpx.get(f"{base_url}/openapi.json").json()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions"):
        event_schema = paths[path]["post"]["responses"]["200"]["content"]["text/event-stream"]["schema"]
        assert event_schema["type"] == "object" and event_schema["required"] == ["data"]
    body = {**chat_body(max_tokens=4, temperature=0), "stream": True}
    events = sse_events(httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60))
    assert events[-1] == "[DONE]"
    for data in events:
        jsonschema.validate({"data": data, "event": "message"}, event_schema)


def test_overload_answers_503_with_retry_after_at_once(server_factory: ServerFactory) -> None:
    with server_factory(max_batch_size=1, max_queue=1) as (url, host):
        engine = host.engine
        assert engine is not None
        long = {**chat_body(max_tokens=200, temperature=0), "stream": True}
        # The queued request waits for its first token before any header comes: send it from a thread.
        queued: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: queued.append(httpx.post(f"{url}/v1/chat/completions", json=long, timeout=60))
        )
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{url}/v1/chat/completions", json=long),
        ):
            wait_for(lambda: engine.load()["running"] == 1, what="the first request to run")
            sender.start()
            wait_for(lambda: engine.load()["waiting"] == 1, what="the second request to queue")
            third = httpx.post(f"{url}/v1/chat/completions", json=chat_body(), timeout=10)
            assert third.status_code == 503
            assert third.headers["retry-after"] == "2"
            assert third.json()["error"]["code"] == "server_overloaded"
        # Closing the first stream frees the slot; the queued request is then served in full.
        sender.join(60)
        assert queued[0].status_code == 200
        assert sse_events(queued[0])[-1] == "[DONE]"
        wait_for(lambda: engine.in_flight == 0, what="the engine to be idle")
        assert httpx.post(f"{url}/v1/chat/completions", json=chat_body(max_tokens=3)).status_code == 200


def test_client_disconnect_cancels_generation_and_frees_the_slot(api: tuple[str, ModelHost]) -> None:
    url, host = api
    engine = host.engine
    assert engine is not None
    registry = host.metrics.registry
    cancelled = {"model_name": host.model_name, "finished_reason": "cancelled"}
    before = registry.get_sample_value("pibloom_request_success_total", cancelled) or 0
    body = {**chat_body(max_tokens=900, temperature=0), "stream": True}
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        wait_for(lambda: engine.load()["running"] == 1, what="the stream to be running")
    # Leaving the block closes the connection mid-stream.
    wait_for(lambda: engine.in_flight == 0, what="the slot to be freed")
    after = registry.get_sample_value("pibloom_request_success_total", cancelled)
    assert after == before + 1


async def test_non_streaming_disconnect_also_cancels(api: tuple[str, ModelHost]) -> None:
    """`until_disconnect` cancels the work when the ASGI server reports the client gone."""
    _, host = api
    engine = host.engine
    assert engine is not None

    async def receive() -> dict[str, str]:
        # Disconnect once generation is under way (the engine offers no asyncio event to await).
        while engine.load()["running"] == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)
    assert host.loaded is not None
    prompt = chat_prompt(host.loaded, [ChatMessage(role="user", content="Hello")])
    params = SamplingParams(max_tokens=900, temperature=0.0, ignore_eos=True)
    with pytest.raises(asyncio.CancelledError):
        await until_disconnect(request, Generation(engine, Prepared(prompt, params), 1).collect())
    await asyncio.to_thread(wait_for, lambda: engine.in_flight == 0, 20.0, "the slot to be freed")
