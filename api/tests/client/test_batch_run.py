"""run_batch against real local HTTP servers: failures, retries, schema retries and load spreading."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pibloom.client import BatchOptions, ResultRow, run_batch
from pibloom.client.output import ResultWriter

from batch_support import LiveServer, StartServers

FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_cap": 0.05, "health_interval": 0.1, "probe_timeout": 2.0}


def prompts(count: int, prefix: str = "film") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}-{n}", "prompt": f"{prefix} number {n}"} for n in range(count)]


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll an async condition until it holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def ids_in(path: Path) -> list[Any]:
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]


async def test_cluster_survives_a_killed_server_and_a_503_one(start_servers: StartServers, tmp_path: Path) -> None:
    steady, doomed, busy = start_servers(
        ["--delay", "0.05"],
        ["--delay", "0.05"],
        ["--delay", "0.05", "--fail-first", "4", "--fail-status", "503", "--retry-after", "0.5"],
    )
    items = prompts(120)
    out = tmp_path / "results.jsonl"
    served_by_doomed = asyncio.Event()
    counts: collections.Counter[str] = collections.Counter()

    def on_result(row: ResultRow) -> None:
        writer.write(row)
        counts[row.server or ""] += 1
        if counts[doomed.url] >= 3:
            served_by_doomed.set()

    async def kill_mid_run() -> None:
        await asyncio.wait_for(served_by_doomed.wait(), 20)

        async def has_work_in_flight() -> bool:
            return (await doomed.astats())["in_flight"] > 0

        await wait_for(has_work_in_flight)
        doomed.kill()  # SIGKILL with requests in flight: their connections are reset

    options = BatchOptions(per_server=4, **FAST)
    with ResultWriter(out) as writer:
        killer = asyncio.ensure_future(kill_mid_run())
        report = await run_batch(items, [steady.url, doomed.url, busy.url], options, on_result=on_result)
        await killer

    # Every item exactly once in the file, all successful, with the server's deterministic answer.
    assert sorted(ids_in(out)) == sorted(item["id"] for item in items)
    rows = {row.id: row for row in report.results}
    assert len(report.results) == len(items) and report.summary.failed == 0
    assert all(rows[item["id"]].output == f"echo: {item['prompt']}" for item in items)
    # The killed server did some work, was ejected, and what it held was redone elsewhere.
    assert counts[doomed.url] >= 3
    assert report.summary.servers[doomed.url].ejections >= 1
    assert any(row.attempts > 1 and row.server != doomed.url for row in report.results)
    # The 503 server's first answers were retried, and its Retry-After was honoured before it got more.
    arrivals = [entry["t"] for entry in busy.stats()["log"]]
    assert len(arrivals) > 4, "the busy server should have rejoined the run"
    assert arrivals[4] - arrivals[3] >= 0.5
    assert report.summary.retries >= 4


async def test_client_errors_are_recorded_and_never_retried(start_servers: StartServers) -> None:
    first, second = start_servers([], [])
    items = [
        {"id": 1, "prompt": "fine"},
        {"id": 2, "prompt": "bad STATUS=400"},
        {"id": 3, "messages": [{"role": "user", "content": "bad STATUS=422"}]},
    ]
    report = await run_batch(items, [first.url, second.url], BatchOptions(**FAST))
    rows = {row.id: row for row in report.results}
    assert rows[1].error is None
    for item_id, status in [(2, 400), (3, 422)]:
        row = rows[item_id]
        assert row.error is not None and row.error.type == "http" and row.error.status == status
        assert row.error.message.startswith("refused: bad STATUS=")
        assert row.attempts == 1 and row.output is None
    sent = first.prompts() + second.prompts()
    assert sent.count("bad STATUS=400") == 1 and sent.count("bad STATUS=422") == 1
    assert report.summary.failed == 2 and report.summary.servers[first.url].ejections == 0


async def test_schema_failures_retry_with_the_next_seed(start_servers: StartServers) -> None:
    (server,) = start_servers([])
    schema = {
        "type": "object",
        "required": ["title", "seed"],
        "properties": {"title": {"type": "string"}, "seed": {"type": "integer"}},
    }
    items: list[dict[str, Any]] = [
        {"id": "later", "messages": [{"role": "user", "content": "JSON-AFTER=2 Alien"}], "temperature": 0.8},
        {"id": "seeded", "prompt": "JSON-AFTER=2 Heat", "seed": 5},
        {"id": "never", "prompt": "JSON-AFTER=9 Ran"},
    ]
    options = BatchOptions(json_schema=schema, max_schema_retries=2, **FAST)
    report = await run_batch(items, [server.url], options)
    rows = {row.id: row for row in report.results}

    later = rows["later"]
    assert later.error is None and later.attempts == 3
    assert later.parsed == {"title": "JSON-AFTER=2 Alien", "seed": 2}
    assert rows["seeded"].attempts == 1 and rows["seeded"].parsed["seed"] == 5

    never = rows["never"]
    assert never.error is not None and never.error.type == "schema" and never.attempts == 3
    assert "'title' is a required property" in never.error.message  # the last error: JSON, wrong shape
    assert never.output == '{"wrong": 2}'

    seeds: dict[str, list[int]] = collections.defaultdict(list)
    for entry in server.stats()["log"]:
        body = entry["body"]
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        seeds[text].append(body["seed"])
        if "messages" in body:
            assert body["temperature"] == 0.8  # the item's own parameters travel with every retry
    assert seeds == {"JSON-AFTER=2 Alien": [0, 1, 2], "JSON-AFTER=2 Heat": [5], "JSON-AFTER=9 Ran": [0, 1, 2]}


async def test_a_hung_server_loses_its_work_long_before_the_request_timeout(start_servers: StartServers) -> None:
    # The frozen server's answers take 2 s, so its first requests are still in flight when the steady
    # server's first result arrives (at 0.05 s, the whole batch would be done before it was seen busy).
    steady, frozen = start_servers(["--delay", "0.05"], ["--delay", "2"])
    items = prompts(40)
    first_result = asyncio.Event()

    async def freeze() -> None:
        await asyncio.wait_for(first_result.wait(), 20)

        async def has_work_in_flight() -> bool:
            return (await frozen.astats())["in_flight"] > 0

        await wait_for(has_work_in_flight)
        frozen.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing: a hung box

    options = BatchOptions(per_server=4, timeout=60.0, **{**FAST, "probe_timeout": 0.3})
    started = time.monotonic()
    freezer = asyncio.ensure_future(freeze())
    report = await run_batch(items, [steady.url, frozen.url], options, on_result=lambda row: first_result.set())
    await freezer
    elapsed = time.monotonic() - started
    assert elapsed < 30.0  # far below the 60 s request timeout the stuck requests would otherwise wait
    assert sorted(row.id for row in report.results) == sorted(item["id"] for item in items)
    assert report.summary.failed == 0
    assert report.summary.servers[frozen.url].ejections >= 1
    assert any(row.attempts > 1 for row in report.results)


async def test_generic_server_without_health_route_and_parameter_passthrough(start_servers: StartServers) -> None:
    (server,) = start_servers(["--no-health", "--model", "other-model", "--api-key", "sekret"])
    items = [
        {"id": 1, "prompt": "completion", "max_tokens": 5, "stop": ["\n"]},
        {"id": 2, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "chat"}]},
    ]
    options = BatchOptions(api_key="sekret", defaults={"max_tokens": 50, "temperature": 0.0}, **FAST)
    report = await run_batch(items, [server.url + "/v1"], options)
    assert [row.error for row in report.results] == [None, None]
    log = {entry["path"]: entry["body"] for entry in server.stats()["log"]}
    assert log["/v1/completions"] == {
        "model": "other-model",
        "prompt": "completion",
        "max_tokens": 5,
        "temperature": 0.0,
        "stop": ["\n"],
    }
    chat = log["/v1/chat/completions"]
    assert chat["model"] == "other-model" and chat["max_tokens"] == 50 and len(chat["messages"]) == 2
    assert {row.id: row.usage.completion_tokens for row in report.results if row.usage} == {1: 2, 2: 2}


async def test_wrong_api_key_is_a_client_error(start_servers: StartServers) -> None:
    (server,) = start_servers(["--api-key", "sekret"])
    report = await run_batch(prompts(2), [server.url], BatchOptions(api_key="wrong", model="m", **FAST))
    assert {(row.error.status if row.error else None) for row in report.results} == {401}
    assert all(row.attempts == 1 for row in report.results)


async def test_no_reachable_server_fails_items_after_the_wait() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    started = time.monotonic()
    report = await run_batch(prompts(5), [f"http://127.0.0.1:{port}"], BatchOptions(wait=0.3, **FAST))
    assert time.monotonic() - started < 10.0
    assert {row.error.type for row in report.results if row.error} == {"no_server"}
    assert report.summary.failed == 5 and all(row.attempts == 0 for row in report.results)


async def test_skip_ids_are_not_requested(start_servers: StartServers) -> None:
    (server,) = start_servers([])
    items = prompts(6)
    report = await run_batch(items, [server.url], BatchOptions(**FAST), skip_ids=["film-0", "film-1"])
    assert sorted(row.id for row in report.results) == [f"film-{n}" for n in range(2, 6)]
    assert sorted(server.prompts()) == [f"film number {n}" for n in range(2, 6)]
    assert report.summary.skipped == 2 and report.summary.total == 6


async def test_least_outstanding_spreads_load_evenly(start_servers: StartServers) -> None:
    servers = start_servers(["--delay", "0.02"], ["--delay", "0.02"], ["--delay", "0.02"])
    # Per-server room to spare, so every pick is the pool's choice, not forced by full servers.
    options = BatchOptions(per_server=12, concurrency=6, **FAST)
    report = await run_batch(prompts(60), [s.url for s in servers], options)
    per_server = collections.Counter(row.server for row in report.results)
    assert sum(per_server.values()) == 60
    assert all(per_server[s.url] >= 12 for s in servers), per_server  # an even share is 20


async def test_least_outstanding_moves_work_away_from_a_slow_server(start_servers: StartServers) -> None:
    fast, slow = start_servers(["--delay", "0.01"], ["--delay", "0.3"])
    options = BatchOptions(per_server=4, concurrency=4, **FAST)
    report = await run_batch(prompts(40), [fast.url, slow.url], options)
    per_server = collections.Counter(row.server for row in report.results)
    assert per_server[slow.url] <= 8 and per_server[fast.url] >= 32, per_server


async def test_round_robin_takes_turns(start_servers: StartServers) -> None:
    servers: list[LiveServer] = start_servers([], [], [])
    options = BatchOptions(strategy="round-robin", concurrency=1, **FAST)
    report = await run_batch(prompts(9), [s.url for s in servers], options)
    assert [row.server for row in report.results] == [s.url for s in servers] * 3
