"""Helpers for driving many concurrent streams against a test server and reading its metrics."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

MODEL = "tiny-bloom"


def stream_body(prompt: str, max_tokens: int) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }


@dataclass
class Outcome:
    status: int
    seconds: float = 0.0
    text: str = ""
    events: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: dict[str, object] | None = None

    @property
    def complete(self) -> bool:
        return self.status == 200 and bool(self.events) and self.events[-1] == "[DONE]"


async def run_stream(client: httpx.AsyncClient, url: str, body: dict[str, object]) -> Outcome:
    """One streamed chat completion, read to its end; the text is the concatenated deltas."""
    start = time.perf_counter()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        outcome = Outcome(response.status_code, headers=dict(response.headers))
        if response.status_code != 200:
            outcome.error = json.loads(await response.aread())["error"]
            outcome.seconds = time.perf_counter() - start
            return outcome
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            outcome.events.append(data)
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:  # generation failed after the stream had started
                outcome.error = chunk["error"]
                continue
            for choice in chunk["choices"]:
                outcome.text += choice["delta"].get("content") or ""
                outcome.finish_reason = choice["finish_reason"] or outcome.finish_reason
    outcome.seconds = time.perf_counter() - start
    return outcome


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """One sample scraped from /metrics (0 when absent), as Prometheus would see it."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return 0.0
