"""The chat-shaped cases (issue 16, points 2 and 3), against any OpenAI-style server over HTTP.

1. Short streams on a fresh server: `streams` greedy chats at once, one request each (the baseline).
2. The same with one ~3,000-token conversation among them: the long request starts first; once its
   first token is out (its prompt is read) `streams - 1` short chats run beside it, and the long one is
   stopped when they are done. Its max_tokens is set so that it outlasts them unless it ends early
   (then `long_outlasted` is False and the figure is weaker).
3. The same short streams again, right after the long one has gone.
4. A ~2,300-token conversation cold (time to first token), then its next turn: the history, the
   model's reply and one short question.

Throughput is compared per short stream (aggregate tok/s over the number of short streams), since
case 2 has one short stream fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from .conversations import LONG_HISTORY_WORDS, LONGEST_WORDS, conversation, next_turn
from .load import PATHS, LoadSpec, run_level, stream_one
from .prompts import WARM_PROMPTS
from .stats import LevelStats, RequestResult, ratio, summarize

CHAT = PATHS["chat"]
REPLY_TOKENS = 48  # the cold turn's reply, sent back as history in the next turn
QUESTION_TOKENS = 16


@dataclass(frozen=True)
class ChatCaseSpec:
    streams: int = 16
    max_tokens: int = 128
    history_words: int = LONG_HISTORY_WORDS
    longest_words: int = LONGEST_WORDS
    deadline_s: float = 300.0

    @property
    def long_max_tokens(self) -> int:
        # Enough to still be generating when the short streams, which start after it, are done.
        return 2 * self.max_tokens + 64


@dataclass
class ChatFigures:
    """One peer's chat-shaped figures; None where a case did not run or failed (see `errors`)."""

    peer: str
    fresh: LevelStats | None = None
    during: LevelStats | None = None
    after: LevelStats | None = None
    long_outlasted: bool | None = None
    long_prompt_ttft_s: float | None = None
    cold_ttft_s: float | None = None
    next_turn_ttft_s: float | None = None
    peak_rss_bytes: int | None = None
    errors: list[str] = field(default_factory=list)

    @staticmethod
    def per_stream(stats: LevelStats | None) -> float | None:
        if stats is None or stats.tokens_per_s is None:
            return None
        return stats.tokens_per_s / stats.concurrency

    @property
    def next_turn_ratio(self) -> float | None:
        return ratio(self.next_turn_ttft_s, self.cold_ttft_s)

    @property
    def during_ratio(self) -> float | None:
        return ratio(self.per_stream(self.during), self.per_stream(self.fresh))

    @property
    def after_ratio(self) -> float | None:
        return ratio(self.per_stream(self.after), self.per_stream(self.fresh))


def chat_body(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def _one(client: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    now = time.monotonic()
    result = RequestResult(start=now, end=now)
    await stream_one(client, result, body, CHAT)
    return result


async def _shorts(base_url: str, model: str, label: str, streams: int, spec: ChatCaseSpec) -> LevelStats:
    load = LoadSpec(streams, streams, spec.max_tokens, spec.deadline_s, "chat")
    return summarize(label, streams, await run_level(base_url, model, load))


async def _first_token(event: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Wait until the long request has streamed its first token, or ended."""
    waiter = asyncio.create_task(event.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


async def long_chat_case(base_url: str, model: str, spec: ChatCaseSpec, figures: ChatFigures) -> None:
    """Cases 1-3 into `figures`."""
    warm = LoadSpec(spec.streams, spec.streams, 8, spec.deadline_s, "chat", WARM_PROMPTS)
    await run_level(base_url, model, warm)  # the batch shape, unmeasured: short prompts grow nothing
    figures.fresh = await _shorts(base_url, model, "fresh", spec.streams, spec)
    longest = conversation(spec.longest_words, seed=2)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(spec.deadline_s, connect=10.0)) as client:
        now = time.monotonic()
        long_result = RequestResult(start=now, end=now)
        body = chat_body(model, longest, spec.long_max_tokens)
        started = asyncio.Event()
        long_task = asyncio.create_task(stream_one(client, long_result, body, CHAT, started))
        await _first_token(started, long_task)
        if long_result.first_token is not None:
            figures.long_prompt_ttft_s = long_result.ttft
        if long_result.error or long_task.done():
            figures.errors.append(f"long conversation: {long_result.error or 'ended before the short streams began'}")
        figures.during = await _shorts(base_url, model, "during", spec.streams - 1, spec)
        figures.long_outlasted = not long_task.done()
        long_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await long_task
    figures.after = await _shorts(base_url, model, "after", spec.streams, spec)
    for name, stats in (("fresh", figures.fresh), ("during", figures.during), ("after", figures.after)):
        if stats.errors:
            figures.errors.append(f"{name}: {stats.errors} failed, e.g. {stats.error_samples[0]}")


async def next_turn_case(base_url: str, model: str, spec: ChatCaseSpec, figures: ChatFigures) -> None:
    """Case 4 into `figures`: cold TTFT of the long history, then of its next turn."""
    history = conversation(spec.history_words, seed=1)
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(spec.deadline_s, connect=10.0)) as client:
        cold = await _one(client, chat_body(model, history, REPLY_TOKENS))
        if cold.error or cold.first_token is None:
            figures.errors.append(f"cold turn: {cold.error or 'no token'}")
            return
        figures.cold_ttft_s = cold.ttft
        follow = await _one(client, chat_body(model, next_turn(history, cold.text), QUESTION_TOKENS))
        if follow.error or follow.first_token is None:
            figures.errors.append(f"next turn: {follow.error or 'no token'}")
            return
        figures.next_turn_ttft_s = follow.ttft


async def run_chat_cases(base_url: str, model: str, peer: str, spec: ChatCaseSpec) -> ChatFigures:
    """Every chat-shaped case, in an order that keeps case 1 on a fresh server."""
    figures = ChatFigures(peer)
    await long_chat_case(base_url, model, spec, figures)
    await next_turn_case(base_url, model, spec, figures)
    return figures
