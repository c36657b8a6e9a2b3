"""Counting a run: done, failed, retries, tokens per second, and how each server did."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .models import ResultRow, Row, ScoreRow
from .pool import Server


@dataclass
class ServerSummary:
    url: str
    items: int = 0
    requests: int = 0
    errors: int = 0
    ejections: int = 0
    completion_tokens: int = 0
    scored_tokens: int = 0
    mean_latency_s: float | None = None


@dataclass
class Summary:
    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    scored_tokens: int = 0
    elapsed_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    servers: dict[str, ServerSummary] = field(default_factory=dict)
    mode: Literal["generate", "score"] = "generate"
    json_items: int = 0  # JSON mode: items answered at least once
    first_try_valid: int = 0  # ... whose first answer was valid

    @property
    def first_try_valid_rate(self) -> float | None:
        return self.first_try_valid / self.json_items if self.json_items else None

    def add(self, row: Row) -> None:
        if isinstance(row, ResultRow) and row.first_try_valid is not None and row.attempts:
            self.json_items += 1
            self.first_try_valid += row.first_try_valid
        self.attempts += row.attempts
        self.retries += max(row.attempts - 1, 0)
        if row.error is None:
            self.done += 1
        else:
            self.failed += 1
            self.errors[row.error.type] = self.errors.get(row.error.type, 0) + 1
        if isinstance(row, ResultRow) and row.usage is not None:
            self.prompt_tokens += row.usage.prompt_tokens
            self.completion_tokens += row.usage.completion_tokens
        if isinstance(row, ScoreRow) and row.tokens is not None:
            self.scored_tokens += row.tokens
        if row.server is not None and row.error is None:
            server = self.servers.setdefault(row.server, ServerSummary(row.server))
            server.items += 1
            if isinstance(row, ResultRow) and row.usage is not None:
                server.completion_tokens += row.usage.completion_tokens
            if isinstance(row, ScoreRow) and row.tokens is not None:
                server.scored_tokens += row.tokens

    def add_servers(self, servers: Iterable[Server]) -> None:
        for server in servers:
            entry = self.servers.setdefault(server.url, ServerSummary(server.url))
            entry.requests = server.stats.requests
            entry.errors = server.stats.errors
            entry.ejections = server.stats.ejections
            if server.stats.ok:
                entry.mean_latency_s = round(server.stats.latency_total / server.stats.ok, 4)

    @property
    def _tokens_label(self) -> str:
        return "tokens scored" if self.mode == "score" else "completion tokens"

    @property
    def tokens(self) -> int:
        """The tokens that measure the work: generated ones, or scored ones in score mode."""
        return self.scored_tokens if self.mode == "score" else self.completion_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["servers"] = list(data["servers"].values())
        data["tokens_per_s"] = round(self.tokens_per_s, 2)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        rate = self.first_try_valid_rate
        data["first_try_valid_rate"] = round(rate, 4) if rate is not None else None
        return data

    def format(self) -> str:
        lines = [
            f"done {self.done}, failed {self.failed}, skipped (already done) {self.skipped}, of {self.total}",
            f"attempts {self.attempts}, retries {self.retries}, {self.elapsed_s:.1f}s, "
            f"{self.tokens} {self._tokens_label} ({self.tokens_per_s:.1f} tokens/s)",
        ]
        if self.json_items:
            rate = self.first_try_valid_rate or 0.0
            lines.append(f"JSON valid on the first try: {self.first_try_valid}/{self.json_items} ({rate:.1%})")
        if self.errors:
            lines.append("errors: " + ", ".join(f"{kind} {count}" for kind, count in sorted(self.errors.items())))
        for entry in self.servers.values():
            latency = f"{entry.mean_latency_s:.2f}s" if entry.mean_latency_s is not None else "-"
            lines.append(
                f"  {entry.url}: items {entry.items}, requests {entry.requests}, errors {entry.errors}, "
                f"ejected {entry.ejections}x, mean latency {latency}, "
                f"tokens {entry.scored_tokens if self.mode == 'score' else entry.completion_tokens}"
            )
        return "\n".join(lines)
