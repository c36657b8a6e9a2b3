"""The load generator: a closed loop of `concurrency` streaming clients against one OpenAI-style server.

Each client sends its next request as soon as its previous one ends, until the level's request count
is reached or its deadline passes; requests still streaming at the deadline are cancelled and marked
`cut`. Every request is greedy (temperature 0) and streams, so time to first token and the gaps
between tokens are what a chat user would see.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from httpx_sse import SSEError, aconnect_sse

from .prompts import PROMPTS, prompt_for
from .stats import RequestResult

Api = Literal["chat", "completions"]
PATHS: dict[Api, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True)
class LoadSpec:
    concurrency: int
    requests: int
    max_tokens: int
    deadline_s: float
    api: Api = "chat"
    prompts: tuple[str, ...] = PROMPTS

    def __post_init__(self) -> None:
        if min(self.concurrency, self.requests, self.max_tokens) < 1 or self.deadline_s <= 0:
            raise ValueError(f"concurrency, requests, max_tokens and deadline must be positive: {self}")
        if not self.prompts:
            raise ValueError("a load needs at least one prompt")


def payload(model: str, prompt: str, max_tokens: int, api: Api) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def chunk_text(chunk: dict[str, Any]) -> str:
    """The text a streamed chunk carries (chat `delta.content` or completion `text`)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return (choice["delta"] or {}).get("content") or ""
    return choice.get("text") or ""


def _error_message(response: httpx.Response) -> str:
    try:
        detail = response.json().get("error", {}).get("message", "")
    except (ValueError, AttributeError):
        detail = response.text[:200]
    return f"HTTP {response.status_code}: {detail}".strip()


async def stream_one(
    client: httpx.AsyncClient,
    result: RequestResult,
    body: dict[str, Any],
    path: str,
    first_token: asyncio.Event | None = None,
) -> None:
    """Stream one request, filling `result` in as chunks arrive (so a cancelled request keeps its figures);
    `first_token` is set when the first token arrives."""
    chunks = 0
    usage_tokens: int | None = None
    try:
        async with aconnect_sse(client, "POST", path, json=body) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                result.error = _error_message(source.response)
                return
            async for event in source.aiter_sse():
                if event.data.strip() == "[DONE]":
                    break
                chunk = json.loads(event.data)
                if "error" in chunk:
                    result.error = f"stream error: {chunk['error'].get('message', chunk['error'])}"
                    return
                if text := chunk_text(chunk):
                    result.text += text
                    now = time.monotonic()
                    if result.first_token is None:
                        result.first_token = now
                        if first_token is not None:
                            first_token.set()
                    result.last_token = now
                    chunks += 1
                    result.tokens = chunks
                usage = chunk.get("usage")
                if usage and usage.get("completion_tokens") is not None:
                    usage_tokens = int(usage["completion_tokens"])
        # A chunk may carry more than one token; the server's own count is the truth when it sends one.
        result.tokens = usage_tokens if usage_tokens is not None else chunks
    except asyncio.CancelledError:
        result.cut = True
        raise
    except (httpx.HTTPError, SSEError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.end = time.monotonic()


async def run_level(base_url: str, model: str, spec: LoadSpec, timeout_s: float = 600.0) -> list[RequestResult]:
    """Run one concurrency level and return every request's result (cut ones included)."""
    results: list[RequestResult] = []
    issued = 0
    started = time.monotonic()
    stop_at = started + spec.deadline_s
    path = PATHS[spec.api]
    limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal issued
            while issued < spec.requests and time.monotonic() < stop_at:
                index = issued
                issued += 1
                now = time.monotonic()
                result = RequestResult(start=now, end=now)
                results.append(result)
                body = payload(model, prompt_for(index, spec.prompts), spec.max_tokens, spec.api)
                await stream_one(client, result, body, path)

        tasks = [asyncio.create_task(worker()) for _ in range(spec.concurrency)]
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.monotonic()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return results


async def model_id(base_url: str) -> str:
    """The first model a server lists under /v1/models (the `model` every request must name)."""
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        response = await client.get("/v1/models")
        response.raise_for_status()
        return str(response.json()["data"][0]["id"])


async def warm_up(base_url: str, model: str, api: Api = "chat") -> RequestResult:
    """One short request so lazy start-up work is not billed to the first level."""
    async with httpx.AsyncClient(base_url=base_url, timeout=300.0) as client:
        now = time.monotonic()
        result = RequestResult(start=now, end=now)
        await stream_one(client, result, payload(model, prompt_for(0), 8, api), PATHS[api])
    return result
