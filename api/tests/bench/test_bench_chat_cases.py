"""The chat-shaped cases against a streaming stand-in server: what is sent, in which order, and the
figures computed from it (no timing assertions: only the order of events the server saw)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pibloom.bench.chat_cases import REPLY_TOKENS, ChatCaseSpec, run_chat_cases
from pibloom.bench.conversations import FOLLOW_UP, LONG_HISTORY_WORDS, LONGEST_WORDS, conversation, next_turn
from pibloom.bench.peers import Launch, free_port, running
from pibloom.bench.prompts import PROMPTS, WARM_PROMPTS

SERVER = Path(__file__).with_name("stream_server.py")
SPEC = ChatCaseSpec(streams=4, max_tokens=6, deadline_s=60.0)


def serve(tmp_path: Path, *flags: str) -> Iterator[str]:
    port = free_port()
    launch = Launch([sys.executable, str(SERVER), str(port), *flags], {}, "/health/ready")
    with running(launch, port, tmp_path / "server.log", ready_timeout=30) as server:
        yield server.base_url


@pytest.fixture
def base_url(tmp_path: Path) -> Iterator[str]:
    yield from serve(tmp_path)


def server_log(base_url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{base_url}/_log", timeout=10).json()


def last_user(entry: dict[str, Any]) -> str:
    return str(entry["messages"][-1]["content"])


def test_the_cases_run_in_order_and_compute_their_figures(base_url: str) -> None:
    figures = asyncio.run(run_chat_cases(base_url, "fake", "pibloom", SPEC))
    log = server_log(base_url)
    assert figures.errors == []
    # warm-up (4 short), fresh (4), the long one, 3 beside it, after (4), cold turn, next turn
    assert len(log) == 4 + 4 + 1 + 3 + 4 + 2
    warm, fresh, long, during, after = log[:4], log[4:8], log[8], log[9:12], log[12:16]
    cold, follow = log[16], log[17]
    assert {last_user(e) for e in warm} <= set(WARM_PROMPTS) and {e["max_tokens"] for e in warm} == {8}
    # concurrent requests arrive in any order
    assert sorted(map(last_user, fresh)) == sorted(PROMPTS[:4]) == sorted(map(last_user, after))
    assert sorted(map(last_user, during)) == sorted(PROMPTS[:3])
    assert long["messages"] == conversation(LONGEST_WORDS, seed=2)
    assert long["max_tokens"] == SPEC.long_max_tokens
    # The short streams ran while the long one streamed, after its first token; it was then stopped,
    # and the "after" streams began only once it had gone.
    assert all(long["first"] <= e["start"] and e["end"] <= long["end"] for e in during)
    assert long["cancelled"] and figures.long_outlasted is True
    assert all(e["start"] >= long["end"] for e in after)
    assert all(not e["cancelled"] for e in [*fresh, *during, *after])
    # The next turn is the history, the reply streamed for the cold turn, and one short question.
    history = conversation(LONG_HISTORY_WORDS, seed=1)
    assert cold["messages"] == history and cold["max_tokens"] == REPLY_TOKENS
    reply = "".join(f"w{i} " for i in range(REPLY_TOKENS))
    assert follow["messages"] == next_turn(history, reply) and last_user(follow) == FOLLOW_UP

    assert figures.fresh is not None and figures.during is not None and figures.after is not None
    assert (figures.fresh.concurrency, figures.fresh.completed, figures.fresh.tokens) == (4, 4, 24)
    assert (figures.during.concurrency, figures.during.completed, figures.during.tokens) == (3, 3, 18)
    assert figures.after.tokens == 24
    assert figures.during_ratio is not None and figures.during_ratio > 0
    assert figures.cold_ttft_s is not None and figures.next_turn_ttft_s is not None
    assert figures.next_turn_ratio == pytest.approx(figures.next_turn_ttft_s / figures.cold_ttft_s)
    assert figures.long_prompt_ttft_s is not None


def test_a_long_conversation_that_fails_is_reported_and_the_rest_still_runs(tmp_path: Path) -> None:
    for url in serve(tmp_path, "--fail-long"):
        figures = asyncio.run(run_chat_cases(url, "fake", "llama-server", SPEC))
    assert figures.errors[0] == "long conversation: HTTP 500: too long"
    assert figures.long_outlasted is False
    assert figures.fresh is not None and figures.fresh.completed == 4
    assert figures.after is not None and figures.after.completed == 4
    # the history is long too (nine messages or more), so both turns failed there as well
    assert figures.cold_ttft_s is None and figures.errors[-1].startswith("cold turn: HTTP 500")


def test_the_conversations_differ_from_the_first_message() -> None:
    history, longest = conversation(LONG_HISTORY_WORDS, seed=1), conversation(LONGEST_WORDS, seed=2)
    assert history[0] != longest[0]
    assert history[0]["role"] == "user" and history[-1]["role"] == "user"
    assert [m["role"] for m in longest[:4]] == ["user", "assistant", "user", "assistant"]
    assert sum(len(m["content"].split()) for m in longest) >= LONGEST_WORDS
    assert conversation(LONGEST_WORDS, seed=2) == longest  # deterministic
