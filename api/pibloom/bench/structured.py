"""`pibloom bench --structured`: what grammar-constrained rows cost the batch.

One piBLOOM server, `streams` concurrent streams (16 by default) in three cases: no row constrained,
one row constrained, every row constrained (`response_format` json_schema). Rows without a
constraint should pay nothing, and the target for all rows constrained is at least 0.8x the
unconstrained tokens/s. The schema is a long list of short strings, so constrained rows run to
max_tokens like the free ones instead of closing their JSON early.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from .load import PATHS, model_id, payload, stream_one, warm_up
from .peers import RssSampler, free_port, pibloom_launch, running
from .prompts import prompt_for
from .stats import RequestResult, summarize

TARGET = 0.8
SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 200}
FORMAT = {"type": "json_schema", "json_schema": {"name": "items", "schema": SCHEMA}}
CASES = ("none", "one", "all")


@dataclass
class CaseStats:
    case: str
    constrained_rows: int
    requests: int
    errors: int
    tokens: int
    tokens_per_s: float | None
    ratio_to_none: float | None = None


async def _run_case(
    base_url: str, model: str, streams: int, constrained: int, requests_per_stream: int, max_tokens: int
) -> list[RequestResult]:
    results: list[RequestResult] = []
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=httpx.Timeout(900.0, connect=10.0)
    ) as client:

        async def stream(worker: int) -> None:
            for n in range(requests_per_stream):
                body = payload(model, prompt_for(worker * requests_per_stream + n), max_tokens, "chat")
                if worker < constrained:
                    body["response_format"] = FORMAT
                now = time.monotonic()
                result = RequestResult(start=now, end=now)
                results.append(result)
                await stream_one(client, result, body, PATHS["chat"])

        await asyncio.gather(*(stream(w) for w in range(streams)))
    return results


def run_structured(
    out_dir: Path,
    *,
    streams: int = 16,
    max_tokens: int = 64,
    requests_per_stream: int = 2,
    echo: Callable[[str], None] = print,
) -> list[CaseStats]:
    port = free_port()
    launch = pibloom_launch(port, batching=True)
    cases: list[CaseStats] = []
    with running(launch, port, out_dir / "logs" / "pibloom-structured.log") as server:
        model = asyncio.run(model_id(server.base_url))
        asyncio.run(warm_up(server.base_url, model))
        for case in CASES:
            constrained = {"none": 0, "one": 1, "all": streams}[case]
            # Unmeasured warm round at the full batch size (and the grammar tokenizer built once).
            asyncio.run(_run_case(server.base_url, model, streams, constrained, 1, 8))
            with RssSampler(server.pid) as rss:
                results = asyncio.run(
                    _run_case(server.base_url, model, streams, constrained, requests_per_stream, max_tokens)
                )
            level = summarize("pibloom", streams, results, rss.peak)
            stats = CaseStats(case, constrained, level.requests, level.errors, level.tokens, level.tokens_per_s)
            cases.append(stats)
            echo(f"  {case} of {streams} rows constrained: {stats.tokens_per_s or 0:.1f} tok/s, {stats.errors} errors")
    base = cases[0].tokens_per_s
    for stats in cases:
        if base and stats.tokens_per_s:
            stats.ratio_to_none = round(stats.tokens_per_s / base, 3)
    return cases


def render(cases: list[CaseStats]) -> str:
    lines = [
        "| rows constrained | requests | tokens | tokens/s | x unconstrained |",
        "|---|---|---|---|---|",
    ]
    for c in cases:
        tps = f"{c.tokens_per_s:.1f}" if c.tokens_per_s else "-"
        ratio = f"{c.ratio_to_none:.2f}" if c.ratio_to_none is not None else "-"
        lines.append(f"| {c.case} ({c.constrained_rows}) | {c.requests} | {c.tokens} | {tps} | {ratio} |")
    last = cases[-1].ratio_to_none if cases else None
    verdict = "met" if last is not None and last >= TARGET else "NOT met"
    lines.append(f"\ntarget: all rows constrained >= {TARGET}x unconstrained: {verdict}")
    return "\n".join(lines)


def write(cases: list[CaseStats], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "structured.json", "table": out_dir / "structured.md"}
    data: dict[str, Any] = {"target": TARGET, "schema": SCHEMA, "cases": [asdict(c) for c in cases]}
    paths["json"].write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    paths["table"].write_text(render(cases) + "\n", encoding="utf-8")
    return paths
