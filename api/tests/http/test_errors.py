"""Bad input gets a clear 4xx naming the problem, in OpenAI's error shape on /v1; never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from support import ServerFactory

MODEL = "tiny-bloom"
USER = [{"role": "user", "content": "Hello"}]


def post(base_url: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", timeout=30, **kwargs)  # type: ignore[arg-type]


def error_of(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "code"} <= set(body["error"])
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_json_is_400(base_url: str, path: str) -> None:
    response = post(
        base_url, path, content=b'{"model": "tiny-bloom", "messages": [', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_json"
    assert "JSON" in str(error["message"])


def test_body_that_is_not_an_object_is_400(base_url: str) -> None:
    response = post(base_url, "/v1/chat/completions", json=["not", "an", "object"])
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": MODEL, "messages": "Hello"}, "messages"),
        ({"model": MODEL, "messages": USER, "temperature": "hot"}, "temperature"),
        ({"model": MODEL, "messages": USER, "max_tokens": "many"}, "max_tokens"),
        ({"model": MODEL, "messages": USER, "stream": "yes please"}, "stream"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"model": MODEL}, "messages"),
        ({"model": MODEL, "messages": USER, "temperature": 3.5}, "temperature"),
        ({"model": MODEL, "messages": USER, "top_p": 0}, "top_p"),
        ({"model": MODEL, "messages": USER, "n": 9}, "n"),
        ({"model": MODEL, "messages": USER, "stop": [str(i) for i in range(17)]}, "stop"),
        ({"model": MODEL, "messages": USER, "min_p": 1.5}, "min_p"),
        ({"model": MODEL, "messages": USER, "logit_bias": {"x": 1}}, "logit_bias"),
        ({"model": MODEL, "messages": USER, "response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_wrong_types_and_ranges_name_the_field(base_url: str, body: dict[str, object], field: str) -> None:
    response = post(base_url, "/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == field
    assert field.split(".")[0] in str(error["message"])


@pytest.mark.parametrize(
    "messages", [[], [{"role": "user", "content": ""}], [{"role": "user", "content": "  "}, {"role": "system"}]]
)
def test_empty_messages_are_400(base_url: str, messages: list[object]) -> None:
    response = post(base_url, "/v1/chat/completions", json={"model": MODEL, "messages": messages})
    assert response.status_code == 400
    assert error_of(response)["param"] == "messages"


@pytest.mark.parametrize("prompt", ["", [], ["a", "b"]])
def test_bad_completion_prompts_are_400(base_url: str, prompt: object) -> None:
    response = post(base_url, "/v1/completions", json={"model": MODEL, "prompt": prompt})
    assert response.status_code == 400
    assert error_of(response)["param"] == "prompt"


def test_prompt_longer_than_the_context_names_the_limit(base_url: str) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 200
    response = post(
        base_url, "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": long_text}]}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "context_length_exceeded"
    assert "1024" in str(error["message"])


def test_prompt_plus_max_tokens_over_the_context_is_400(base_url: str) -> None:
    response = post(base_url, "/v1/completions", json={"model": MODEL, "prompt": "Hello", "max_tokens": 1024})
    assert response.status_code == 400
    assert error_of(response)["code"] == "context_length_exceeded"


@pytest.mark.parametrize("max_tokens", [0, -5, 100_000])
def test_max_tokens_out_of_range(base_url: str, max_tokens: int) -> None:
    response = post(base_url, "/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": max_tokens})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "max_tokens"
    assert "max_tokens" in str(error["message"])


def test_unknown_model_is_404(base_url: str) -> None:
    response = post(base_url, "/v1/chat/completions", json={"model": "gpt-4o", "messages": USER})
    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "model_not_found"
    assert "gpt-4o" in str(error["message"]) and MODEL in str(error["message"])


@pytest.fixture(scope="module")
def strict_url(server_factory: ServerFactory) -> Iterator[str]:
    """PIBLOOM_STRICT_FIELDS=true: unknown fields are refused by name, as before issue 13."""
    with server_factory(strict_fields=True) as (url, _host):
        yield url


@pytest.mark.parametrize(
    "field, value",
    [
        ("functions", [{"name": "f"}]),
        ("made_up_option", True),
    ],
)
def test_unsupported_openai_fields_are_rejected_by_name(strict_url: str, field: str, value: object) -> None:
    response = post(strict_url, "/v1/chat/completions", json={"model": MODEL, "messages": USER, field: value})
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "unsupported_field"
    assert error["param"] == field
    assert field in str(error["message"])


def test_strict_mode_names_unknown_fields_inside_messages(strict_url: str) -> None:
    messages = [{"role": "user", "content": "Hello", "vendor_tag": 1}]
    response = post(strict_url, "/v1/chat/completions", json={"messages": messages, "max_tokens": 2})
    assert response.status_code == 400
    assert error_of(response)["param"] == "messages.0.vendor_tag"


def test_strict_mode_still_answers_known_fields(strict_url: str) -> None:
    body = {"messages": USER, "max_tokens": 2, "presence_penalty": 0.5, "n": 2, "logit_bias": {"5": -100}}
    response = post(strict_url, "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 2


def test_image_content_parts_are_rejected(base_url: str) -> None:
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}
    response = post(base_url, "/v1/chat/completions", json={"model": MODEL, "messages": [message]})
    assert response.status_code == 400


def test_out_of_vocabulary_token_ids_are_400(base_url: str) -> None:
    response = post(base_url, "/v1/completions", json={"model": MODEL, "prompt": [1, 2, 999_999]})
    assert response.status_code == 400
    assert error_of(response)["param"] == "prompt"


def test_unknown_route_and_method(base_url: str) -> None:
    assert httpx.get(f"{base_url}/v1/nothing-here").status_code == 404
    assert httpx.get(f"{base_url}/v1/chat/completions").status_code == 405


def test_nothing_above_returned_a_5xx(base_url: str) -> None:
    metrics = httpx.get(f"{base_url}/metrics").text
    server_errors = [line for line in metrics.splitlines() if 'status="5' in line and "_count" in line]
    statuses = {line.split('status="')[1][:3] for line in server_errors}
    # 503s come only from the deliberate load-shedding tests, which use servers of their own.
    assert not statuses, server_errors


def test_strict_mode_covers_every_body(strict_url: str) -> None:
    for path, body in [
        ("/v1/completions", {"prompt": "Hi", "max_tokens": 2, "bogus": 1}),
        ("/v1/score", {"text": "Hello there", "bogus": 1}),
        ("/tokenize", {"prompt": "Hi", "bogus": 1}),
        ("/detokenize", {"tokens": [1], "bogus": 1}),
    ]:
        response = post(strict_url, path, json=body)
        assert response.status_code == 400, (path, response.text)
        assert "bogus" in response.text
