"""`pibloom batch` with structured output: the schema as `response_format` where the server enforces
it, validate-and-retry where it refuses the field, the first-try valid rate, and OpenAI's Batch format."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
from click.testing import CliRunner

from pibloom.client.batch import run_batch
from pibloom.client.cli import batch_command
from pibloom.client.options import BatchOptions

from batch_support import StartServers

FAST = ["--health-interval", "0.1", "--no-progress"]
RECORD = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 12},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
    },
    "required": ["title", "year"],
    "additionalProperties": False,
}


def test_piBLOOM_enforces_the_schema_so_every_first_answer_is_valid(base_url: str) -> None:
    """The tiny model has random weights: only the server's grammar can make every first answer valid."""
    items = [{"id": i, "prompt": f"Record {i}:", "max_tokens": 80, "temperature": 1.0} for i in range(6)]
    options = BatchOptions(json_schema=RECORD, max_schema_retries=0, health_interval=0.1)
    report = asyncio.run(run_batch(items, [base_url], options))
    assert report.summary.failed == 0
    for row in report.results:
        jsonschema.validate(row.parsed, RECORD)  # type: ignore[union-attr]
        assert row.attempts == 1
    assert report.summary.first_try_valid_rate == 1.0
    assert "JSON valid on the first try: 6/6 (100.0%)" in report.summary.format()


def test_server_refusing_response_format_gets_validate_and_retry(start_servers: StartServers) -> None:
    (server,) = start_servers(["--no-response-format"])
    schema = {"type": "object", "required": ["title"]}
    items = [{"id": i, "prompt": f"JSON-AFTER={1 + i % 2} item {i}"} for i in range(4)]
    options = BatchOptions(json_schema=schema, health_interval=0.1, per_server=1)
    report = asyncio.run(run_batch(items, [server.url], options))
    assert report.summary.failed == 0
    bodies = [entry["body"] for entry in server.stats()["log"]]
    assert "response_format" in bodies[0]
    assert all("response_format" not in body for body in bodies[1:])  # refused once, remembered
    assert report.summary.first_try_valid_rate == 0.0  # seed 0 answers are never JSON here
    assert report.summary.to_dict()["first_try_valid_rate"] == 0.0


def test_openai_batch_format_in_and_out(start_servers: StartServers, tmp_path: Path) -> None:
    (server,) = start_servers([])
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "test-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
        },
        {
            "custom_id": "b",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "STATUS=400 bad", "max_tokens": 5},
        },
    ]
    source = tmp_path / "batch.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(batch_command, [str(source), "-o", str(out), "-s", server.url, *FAST])
    assert result.exit_code == 1, result.output  # one request failed
    rows: dict[str, dict[str, Any]] = {r["custom_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    ok = rows["a"]
    assert ok["id"].startswith("batch_req_") and ok["error"] is None
    assert ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["choices"][0]["message"]["content"] == "echo: hello"
    assert rows["b"]["response"]["status_code"] == 400 and rows["b"]["error"]["code"] == "http"
    sent = server.stats()["log"][0]["body"]
    assert sent["max_tokens"] == 5 and sent["model"] == "test-model"
    # Resuming reads the Batch output: the done item is not sent again.
    again = CliRunner().invoke(batch_command, [str(source), "-o", str(out), "-s", server.url, *FAST])
    assert again.exit_code == 1
    assert [e["body"].get("prompt") or "chat" for e in server.stats()["log"]].count("chat") == 1


def test_bad_openai_batch_line_is_a_clear_error(tmp_path: Path) -> None:
    source = tmp_path / "batch.jsonl"
    source.write_text(json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}) + "\n")
    result = CliRunner().invoke(
        batch_command, [str(source), "-o", str(tmp_path / "o.jsonl"), "-s", "http://127.0.0.1:9", *FAST]
    )
    assert result.exit_code != 0 and "/v1/embeddings" in result.output
