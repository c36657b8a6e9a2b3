"""Structured output on the tiny random-weight model: the grammar mask alone must make every reply
valid (the weights know nothing of JSON), alone, in mixed batches, streamed and not."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from typing import Any

import httpx
import jsonschema
import pytest

from pibloom.engine.loader import LoadedModel
from pibloom.serving.prepare import grammar_ready

from support import ServerFactory

MODEL = "tiny-bloom"
USER = [{"role": "user", "content": "Give me the record."}]

# Bounded schemas: a random model would otherwise never close a free string or number.
SCHEMAS: dict[str, dict[str, Any]] = {
    "nested objects": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 8},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                },
                "required": ["name", "age"],
                "additionalProperties": False,
            }
        },
        "required": ["user"],
        "additionalProperties": False,
    },
    "array min/max items": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 2,
        "maxItems": 4,
    },
    "enum": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}},
        "required": ["color"],
        "additionalProperties": False,
    },
    "integer range": {"type": "integer", "minimum": 10, "maximum": 99},
    "string pattern": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
    "anyOf": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999}, {"type": "string", "maxLength": 5}]},
    "$ref": {
        "$defs": {
            "pt": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9}},
                "required": ["x"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
}


def fmt(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "record", "schema": schema, "strict": True}}


def chat(base_url: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json={"messages": USER, **body}, timeout=120)


def assert_valid(text: str, schema: dict[str, Any]) -> None:
    jsonschema.validate(json.loads(text), schema)


def test_the_grammar_tokenizer_waits_for_the_first_structured_request(
    server_factory: ServerFactory, tiny_loaded: LoadedModel
) -> None:
    """llguidance's view of the vocabulary is resident only once a request has asked for structured
    output: not at load, not for a free request, then built by the first constrained one, which is
    followed."""
    fresh = dataclasses.replace(tiny_loaded, tokenizer=copy.copy(tiny_loaded.tokenizer))  # not yet seen
    with server_factory(loader=lambda settings: fresh) as (url, _):
        assert chat(url, max_tokens=2).status_code == 200
        assert not grammar_ready(fresh)
        schema = SCHEMAS["enum"]
        response = chat(url, response_format=fmt(schema), max_tokens=40, temperature=1.0, seed=5)
        assert response.status_code == 200, response.text
        assert grammar_ready(fresh)
        assert_valid(response.json()["choices"][0]["message"]["content"], schema)


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_schema_is_followed(base_url: str, name: str) -> None:
    schema = SCHEMAS[name]
    response = chat(base_url, response_format=fmt(schema), max_tokens=120, temperature=1.0, seed=3)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop", choice
    assert_valid(choice["message"]["content"], schema)


def test_completions_follow_a_schema_too(base_url: str) -> None:
    schema = SCHEMAS["$ref"]
    body = {"prompt": "Record:", "response_format": fmt(schema), "max_tokens": 120, "n": 3, "temperature": 1.0}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    for choice in response.json()["choices"]:
        assert_valid(choice["text"], schema)


async def _one(client: httpx.AsyncClient, base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(f"{base_url}/v1/chat/completions", json={"messages": USER, **body}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_constrained_and_free_rows_share_a_batch(base_url: str) -> None:
    """Every schema at once next to unconstrained requests: each constrained reply validates, and the
    free ones are exactly what they are alone (greedy), so the masks touched only their own rows."""
    free = {"max_tokens": 12, "temperature": 0.0}
    alone = chat(base_url, **free).json()["choices"][0]["message"]["content"]

    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient() as client:
            bodies = [{"response_format": fmt(s), "max_tokens": 120, "seed": i} for i, s in enumerate(SCHEMAS.values())]
            bodies += [free, free]
            return await asyncio.gather(*(_one(client, base_url, b) for b in bodies))

    answers = asyncio.run(run())
    for schema, answer in zip(SCHEMAS.values(), answers, strict=False):
        assert_valid(answer["choices"][0]["message"]["content"], schema)
    for answer in answers[len(SCHEMAS) :]:
        assert answer["choices"][0]["message"]["content"] == alone


def test_streamed_constrained_reply_validates(base_url: str) -> None:
    schema = SCHEMAS["nested objects"]
    body = {"messages": USER, "response_format": fmt(schema), "max_tokens": 120, "stream": True, "n": 2}
    parts: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, str] = {}
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                parts[choice["index"]] += choice["delta"].get("content") or ""
                if choice["finish_reason"]:
                    finish[choice["index"]] = choice["finish_reason"]
    assert finish == {0: "stop", 1: "stop"}
    for text in parts.values():
        assert_valid(text, schema)


def test_json_object_gives_an_object_or_is_cut_by_length(base_url: str) -> None:
    response = chat(base_url, response_format={"type": "json_object"}, max_tokens=40, seed=1, temperature=1.0)
    choice = response.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"]), dict)
    else:
        assert choice["finish_reason"] == "length"
        assert choice["message"]["content"].startswith("{")


def test_reply_cut_by_max_tokens_ends_with_length(base_url: str) -> None:
    schema = {"type": "array", "items": {"type": "integer"}, "minItems": 50}
    choice = chat(base_url, response_format=fmt(schema), max_tokens=5).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"].startswith("[")


@pytest.mark.parametrize(
    ("schema", "words"),
    [
        ({"type": "array", "uniqueItems": True}, ["uniqueItems"]),
        ({"not": {"type": "string"}}, ["not"]),
        ({"type": "string", "pattern": "(?<=a)b"}, ["look"]),
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, ["missing"]),
    ],
)
def test_schema_features_that_cannot_be_enforced_are_400(
    base_url: str, schema: dict[str, Any], words: list[str]
) -> None:
    response = chat(base_url, response_format=fmt(schema))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "response_format.json_schema.schema"
    for word in words:
        assert word in error["message"]


def test_invalid_json_schema_is_400(base_url: str) -> None:
    response = chat(base_url, response_format=fmt({"type": "banana"}))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_schema" and "not valid JSON Schema" in error["message"]


def test_schema_over_the_size_bound_is_400(base_url: str) -> None:
    schema = {
        "type": "object",
        "properties": {f"field_{i}": {"type": "string", "description": "x" * 64} for i in range(600)},
    }
    response = chat(base_url, response_format=fmt(schema))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "schema_too_large" and "32768" in error["message"]
