"""JSON extraction and schema checks; Retry-After parsing, backoff and which statuses are retried."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pibloom.client.retry import Backoff, is_retryable_status, parse_retry_after
from pibloom.client.validate import OutputError, extract_json, load_schema, make_validator, parse_output

SCHEMA = {
    "type": "object",
    "required": ["title", "year"],
    "properties": {"title": {"type": "string"}, "year": {"type": "integer", "minimum": 1888}},
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ("  [1, 2]\n", [1, 2]),
        ('"just a string"', "just a string"),
        ('```json\n{"a": {"b": [1]}}\n```', {"a": {"b": [1]}}),
        ('Sure! Here it is:\n```\n{"a": 2}\n```\nAnything else?', {"a": 2}),
        ('The record is {"name": "brace } inside", "n": 3} as asked.', {"name": "brace } inside", "n": 3}),
        ('Note [see below]: {"ok": true}', {"ok": True}),
        ('```json\n{"cut": "off fence"}\n', {"cut": "off fence"}),
    ],
)
def test_extract_json_finds_the_value(text: str, expected: object) -> None:
    assert extract_json(text) == expected


@pytest.mark.parametrize("text", ["", "no json here", '{"unterminated": ', "```\nnot json\n```"])
def test_extract_json_fails_clearly(text: str) -> None:
    with pytest.raises(OutputError, match="no JSON value found"):
        extract_json(text)


def test_schema_validation_names_the_failing_field() -> None:
    validator = make_validator(SCHEMA)
    assert parse_output('```json\n{"title": "Alien", "year": 1979}\n```', validator)["year"] == 1979
    with pytest.raises(OutputError, match=r"schema violation at year: 1800 is less than the minimum"):
        parse_output('{"title": "Old", "year": 1800}', validator)
    with pytest.raises(OutputError, match="'year' is a required property"):
        parse_output('{"title": "Alien"}', validator)
    # Without a schema any JSON value passes.
    assert parse_output("[1]", None) == [1]


def test_bad_schemas_are_rejected_before_use(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="invalid JSON Schema"):
        make_validator({"type": "no-such-type"})
    broken = tmp_path / "schema.json"
    broken.write_text("{oops", encoding="utf-8")
    with pytest.raises(OutputError, match="not valid JSON"):
        load_schema(broken)
    good = tmp_path / "good.json"
    good.write_text(json.dumps(SCHEMA), encoding="utf-8")
    assert load_schema(good).is_valid({"title": "x", "year": 2000})


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0.5 ", now) == 0.5
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:07 GMT", now) == 7.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0  # in the past: go now
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("86400", now) == 300.0  # clamped
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    backoff = Backoff(base=0.5, factor=2.0, cap=4.0)
    rng = random.Random(1)
    for retry, step in enumerate([0.5, 1.0, 2.0, 4.0, 4.0]):
        delays = [backoff.delay(retry, rng) for _ in range(200)]
        assert all(step / 2 <= delay <= step for delay in delays)
        assert max(delays) - min(delays) > step / 4  # jitter actually spreads the retries


@pytest.mark.parametrize(
    ("status", "retryable"),
    [
        *[(status, False) for status in (400, 401, 404, 413, 422)],
        *[(status, True) for status in (408, 429, 500, 502, 503, 504)],
    ],
)
def test_only_overload_timeouts_and_server_faults_are_retried(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable
