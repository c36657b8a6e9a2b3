"""`run_batch`: the library entry point. Items go to a pool of workers (the total concurrency); each
worker takes a server slot from the pool, sends, and retries elsewhere on failure."""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from .inputs import parse_item, unique
from .inventory import normalize_url
from .jobs import Job, ScoreJob
from .models import BatchItem, ErrorInfo, Item, ItemId, ResultRow, Row, ScoreItem, id_key
from .options import BatchOptions
from .pool import Attempt, NoServerError, Server, ServerPool, UnsupportedError
from .retry import Backoff
from .summary import Summary
from .validate import make_validator

ResultCallback = Callable[[Row], Awaitable[None] | None]


@dataclass
class BatchReport:
    results: list[Row]
    summary: Summary

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.results if row.error is not None]


class _ItemRunner:
    """The attempt loop of one item: take a server slot, send, and retry elsewhere on failure."""

    def __init__(self, pool: ServerPool, options: BatchOptions, job: Job) -> None:
        self.pool = pool
        self.options = options
        self.job = job
        self.backoff = Backoff(options.backoff_base, 2.0, options.backoff_cap)
        self.rng = random.Random(options.jitter_seed)

    def _lacks_endpoint(self, attempt: Attempt) -> bool:
        # piBLOOM answers an unknown model with 404 too, but says so in error.code.
        return (
            self.job.missing_endpoint is not None
            and attempt.kind == "http"
            and attempt.status in (404, 405)
            and attempt.code != "model_not_found"
        )

    async def run(self, item: Item) -> Row:
        row, first_valid = await self._run(item)
        if isinstance(row, ResultRow) and self.options.wants_json:
            row.first_try_valid = bool(first_valid)
        return row

    async def _run(self, item: Item) -> tuple[Row, bool | None]:
        """The item's row, and whether its first answer was already valid (JSON mode)."""
        first_valid: bool | None = None
        attempts = retries = variant = 0
        failed_on: set[str] = set()
        attempt: Attempt | None = None
        server: Server | None = None
        while True:
            try:
                server = await self.pool.acquire(failed_on)
            except NoServerError as exc:
                row = self.job.row(item, attempts, attempt, server)
                if isinstance(exc, UnsupportedError):
                    row.error = ErrorInfo(type="unsupported", message=str(exc), status=404)
                else:
                    row.error = ErrorInfo(type="no_server", message=str(exc))
                return row, first_valid
            try:
                attempts += 1
                body = self.job.body(item, server, variant)
                attempt = await self.pool.request(server, self.job.path(item), body, self.job.reader(item))
            finally:
                self.pool.release(server)
            row = self.job.row(item, attempts, attempt, server)
            if attempt.kind == "ok":
                problem = self.job.check(row)
                if first_valid is None:
                    first_valid = problem is None
                if problem is None:
                    return row, first_valid
                variant += 1
                if variant > self.job.max_variants:
                    row.error = ErrorInfo(type="schema", message=problem)
                    return row, first_valid
                continue
            if self.job.format_refused(attempt, server):
                continue  # the same item again, without response_format: not a retry
            row.error = ErrorInfo(type=attempt.kind, message=attempt.message, status=attempt.status)
            if self._lacks_endpoint(attempt):
                # Not the item's fault: that server gets no more work, the item goes elsewhere. When no
                # server is left, acquire() raises UnsupportedError, so this cannot loop forever.
                self.pool.mark_unsupported(server, self.job.missing_endpoint or "")
                continue
            if not attempt.retryable:
                return row, first_valid
            retries += 1
            if retries > self.options.max_retries:
                return row, first_valid
            failed_on.add(server.url)
            await asyncio.sleep(self.backoff.delay(retries - 1, self.rng))


def _prepare(
    items: Iterable[Item | Mapping[str, Any]], skip_ids: Collection[ItemId], score: bool
) -> tuple[list[Item], list[Item]]:
    kind = ScoreItem if score else BatchItem
    parsed = unique(parse_item(dict(item) if isinstance(item, Mapping) else item, kind) for item in items)
    skip = {id_key(item_id) for item_id in skip_ids}
    return parsed, [item for item in parsed if id_key(item.id) not in skip]


async def run_batch(
    items: Iterable[Item | Mapping[str, Any]],
    servers: Iterable[str],
    options: BatchOptions | None = None,
    *,
    skip_ids: Collection[ItemId] = (),
    on_result: ResultCallback | None = None,
    client: httpx.AsyncClient | None = None,
) -> BatchReport:
    """Run every item (except `skip_ids`) against `servers`; return the results and a summary.

    Items are BatchItem or dicts (`{"id", "prompt" | "messages", ...params}`); with `options.score`,
    ScoreItem or dicts (`{"id", "text", "context"?}`) whose results are ScoreRow. Servers are base URLs
    of piBLOOM or any OpenAI-compatible server (scoring needs piBLOOM). `on_result` (sync or async)
    sees each result as it finishes, e.g. to write it out; results come in completion order.
    """
    options = options or BatchOptions()
    urls = list(dict.fromkeys(normalize_url(url) for url in servers))
    if not urls:
        raise ValueError("no servers given")
    everything, pending = _prepare(items, skip_ids, options.score)
    validator = make_validator(options.json_schema) if options.json_schema is not None else None
    job = ScoreJob(options) if options.score else Job(options, validator)
    total = options.concurrency or options.per_server * len(urls)
    own_client = client is None
    if client is None:
        # Room for every request in flight plus health checks, so httpx never queues a request.
        limits = httpx.Limits(max_connections=total + 2 * len(urls), max_keepalive_connections=total + len(urls))
        client = httpx.AsyncClient(limits=limits)
    pool = ServerPool(urls, client, options)
    runner = _ItemRunner(pool, options, job)
    summary = Summary(
        total=len(everything), skipped=len(everything) - len(pending), mode="score" if options.score else "generate"
    )
    results: list[Row] = []
    queue = iter(pending)
    started = time.monotonic()

    async def emit(row: Row) -> None:
        results.append(row)
        summary.add(row)
        if on_result is not None:
            outcome = on_result(row)
            if inspect.isawaitable(outcome):
                await outcome

    async def worker() -> None:
        for item in queue:  # one shared iterator: each item is taken by exactly one worker
            await emit(await runner.run(item))

    try:
        if pending:
            await pool.start()
            workers = [asyncio.ensure_future(worker()) for _ in range(min(total, len(pending)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
    finally:
        await pool.close()
        if own_client:
            await client.aclose()
        summary.elapsed_s = time.monotonic() - started
        summary.add_servers(pool.servers)
    return BatchReport(results, summary)
