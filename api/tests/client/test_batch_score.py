"""`pibloom batch --score`: texts to /v1/score across servers, score rows out, and servers that lack it."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from pibloom.client import BatchOptions, ScoreRow, run_batch
from pibloom.client.cli import batch_command
from pibloom.engine.loader import LoadedModel
from pibloom.settings import Settings

from batch_support import LiveServer, StartServers
from support import running_server

FAST_CLI = ["--health-interval", "0.1", "--no-progress"]
FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05, "health_interval": 0.1, "probe_timeout": 2.0}
SCORE_FIELDS = {"id", "tokens", "logprob", "mean_logprob", "perplexity", "server", "attempts", "latency_s", "error"}


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(batch_command, [*args, *FAST_CLI], catch_exceptions=False)
    return result.exit_code, result.output


def rows(path: Path) -> dict[Any, dict[str, Any]]:
    found = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {row["id"]: row for row in found}


def score_bodies(server: LiveServer) -> list[dict[str, Any]]:
    return [entry["body"] for entry in server.stats()["log"] if entry["path"] == "/v1/score"]


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def test_score_mode_writes_score_rows_and_resumes(start_servers: StartServers, tmp_path: Path) -> None:
    one, two = start_servers([], [])
    source = write_jsonl(
        tmp_path / "texts.jsonl",
        [
            {"id": "a", "text": "a bb ccc"},
            {"id": "b", "text": "a bb ccc", "context": "x y"},  # its own context beats --context
            {"id": "c", "text": "dddd", "meta": {"row": 3}},
        ],
    )
    out = tmp_path / "scores.jsonl"
    args = [str(source), "-o", str(out), "-s", one.url, "-s", two.url, "--score", "--context", "q"]
    code, text = run_cli(*args)
    assert code == 0, text
    found = rows(out)
    # The test server's score: each word is a token with logprob -len(word) / (1 + context words).
    assert {key: found["a"][key] for key in ("tokens", "logprob", "mean_logprob")} == {
        "tokens": 3,
        "logprob": -3.0,
        "mean_logprob": -1.0,
    }
    assert found["a"]["perplexity"] == pytest.approx(math.e)
    assert (found["b"]["tokens"], found["b"]["logprob"]) == (3, pytest.approx(-2.0))
    assert found["b"]["perplexity"] == pytest.approx(math.exp(2 / 3))
    assert (found["c"]["logprob"], found["c"]["meta"]) == (-2.0, {"row": 3})
    assert set(found["a"]) == SCORE_FIELDS and set(found["c"]) == SCORE_FIELDS | {"meta"}
    assert all(row["error"] is None and row["attempts"] == 1 for row in found.values())
    assert {row["server"] for row in found.values()} <= {one.url, two.url}
    bodies = {body["text"] + "|" + body.get("context", ""): body for body in score_bodies(one) + score_bodies(two)}
    assert bodies["a bb ccc|q"] == {"model": "test-model", "text": "a bb ccc", "context": "q"}
    assert set(bodies) == {"a bb ccc|q", "a bb ccc|x y", "dddd|q"}
    assert "done 3, failed 0" in text and "7 tokens scored" in text

    code, text = run_cli(*args)  # the same command again: everything is done already
    assert code == 0 and "skipped (already done) 3" in text
    assert len(score_bodies(one) + score_bodies(two)) == 3


def test_a_server_without_score_gets_no_more_work(start_servers: StartServers, tmp_path: Path) -> None:
    plain, scorer = start_servers(["--no-score", "--delay", "0.02"], ["--delay", "0.02"])
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"text number {n}\n" for n in range(30)), encoding="utf-8")
    out, summary = tmp_path / "scores.jsonl", tmp_path / "summary.json"
    servers = ["-s", plain.url, "-s", scorer.url]
    code, text = run_cli(
        str(source), "-o", str(out), *servers, "--score", "--per-server", "2", "--summary-json", str(summary)
    )
    assert code == 0, text
    found = rows(out)
    assert sorted(found) == list(range(1, 31))  # text file: ids are line numbers
    assert all(row["error"] is None and row["server"] == scorer.url for row in found.values())
    assert all(row["tokens"] == 3 for row in found.values())
    # It was tried (first in the list), answered 404, and got nothing after: at most one request per slot.
    per_server = {entry["url"]: entry for entry in json.loads(summary.read_text(encoding="utf-8"))["servers"]}
    tried = per_server[plain.url]["requests"]
    assert 1 <= tried <= 2 and per_server[plain.url]["errors"] == tried
    assert sum(row["attempts"] == 2 for row in found.values()) == tried
    assert per_server[scorer.url]["items"] == 30


def test_no_server_with_score_fails_every_item_at_once(start_servers: StartServers, tmp_path: Path) -> None:
    first, second = start_servers(["--no-score"], ["--no-score"])
    source = tmp_path / "lines.txt"
    source.write_text("".join(f"text {n}\n" for n in range(20)), encoding="utf-8")
    out, summary = tmp_path / "scores.jsonl", tmp_path / "summary.json"
    servers = ["-s", first.url, "-s", second.url, "--per-server", "2", "--wait", "60"]
    started = time.monotonic()
    code, text = run_cli(str(source), "-o", str(out), *servers, "--score", "--summary-json", str(summary))
    assert time.monotonic() - started < 30  # no waiting out --wait for a server that might have it
    assert code == 1 and "errors: unsupported 20" in text
    found = rows(out)
    assert len(found) == 20
    for row in found.values():
        assert row["error"]["type"] == "unsupported" and row["error"]["status"] == 404
        assert row["error"]["message"].startswith("server has no /v1/score")
        assert row["tokens"] is None and row["perplexity"] is None
    # One 404 per in-flight slot at most, then nothing: no more than 4 requests for the 20 items.
    data = json.loads(summary.read_text(encoding="utf-8"))
    assert 2 <= data["attempts"] <= 4
    assert all(1 <= entry["requests"] <= 2 for entry in data["servers"])


async def test_score_retries_overload_and_records_client_errors(start_servers: StartServers) -> None:
    (busy,) = start_servers(["--fail-first", "2", "--fail-status", "503"])
    items = [{"id": n, "text": f"w{'x' * n}"} for n in range(4)] + [{"id": "bad", "text": "STATUS=400 nope"}]
    report = await run_batch(items, [busy.url], BatchOptions(score=True, **FAST))
    found = {row.id: row for row in report.results}
    assert all(isinstance(row, ScoreRow) for row in report.results)
    for n in range(4):
        assert found[n].error is None and found[n].logprob == -(n + 1)
    bad = found["bad"]
    assert bad.error is not None and (bad.error.type, bad.error.status, bad.attempts) == ("http", 400, 1)
    assert report.summary.retries == 2 and report.summary.scored_tokens == 4

    # A 404 naming the model is the input's fault: recorded once per item, the server stays in use.
    report = await run_batch(items[:3], [busy.url], BatchOptions(score=True, model="nope", **FAST))
    for row in report.results:
        assert row.error is not None and (row.error.type, row.error.status, row.attempts) == ("http", 404, 1)
        assert "does not exist" in row.error.message


def test_score_mode_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    out = str(tmp_path / "out.jsonl")
    server = ["-s", "http://127.0.0.1:9"]
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "prompt": "not a text"}])
    code, text = run_cli(str(source), "-o", out, *server, "--score")
    assert code == 2 and "in.jsonl:1: text: Field required" in text and "prompt: unknown key" in text
    code, text = run_cli(str(source), "-o", out, *server, "--context", "c")
    assert code == 2 and "--context needs --score" in text
    code, text = run_cli(str(source), "-o", out, *server, "--score", "--max-tokens", "5", "--json")
    assert code == 2 and "--score does not take generation options: --max-tokens, --json" in text


def test_batch_scores_equal_piblooms_own_score_endpoint(
    tiny_settings: Settings, tiny_loaded: LoadedModel, tmp_path: Path
) -> None:
    items = [
        {"id": "fox", "text": "The quick brown fox jumps over the lazy dog."},
        {"id": "hello", "text": "Hello, how are you today?"},
        {"id": "reply", "text": " hello there", "context": "User: hi\nAssistant:"},
        {"id": "pi", "text": "Raspberry Pi clusters run microk8s."},
    ]
    source = write_jsonl(tmp_path / "texts.jsonl", items)
    out = tmp_path / "scores.jsonl"
    with running_server(tiny_settings, tiny_loaded) as (url, _):
        code, text = run_cli(str(source), "-o", str(out), "-s", url, "--score")
        assert code == 0, text
        direct = {}
        for item in items:
            body = {"text": item["text"], **({"context": item["context"]} if "context" in item else {})}
            response = httpx.post(f"{url}/v1/score", json=body, timeout=60)
            assert response.status_code == 200, response.text
            direct[item["id"]] = response.json()["data"][0]
    found = rows(out)
    assert set(found) == set(direct)
    for item_id, expected in direct.items():
        row = found[item_id]
        assert row["error"] is None and row["server"] == url
        assert row["tokens"] == expected["tokens"]
        # Requests batched together are computed in one padded forward pass: equal up to float noise.
        for key in ("logprob", "mean_logprob", "perplexity"):
            assert row[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key
