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
from jsonschema.protocols import Validator

from .inputs import parse_item, unique
from .inventory import normalize_url
from .models import BatchItem, ErrorInfo, ItemId, ResultRow, Usage, id_key
from .options import BatchOptions
from .retry import Backoff
from .servers import Attempt, NoServerError, Server, ServerPool
from .summary import Summary
from .validate import OutputError, make_validator, parse_output

ResultCallback = Callable[[ResultRow], Awaitable[None] | None]


@dataclass
class BatchReport:
    results: list[ResultRow]
    summary: Summary

    @property
    def failed(self) -> list[ResultRow]:
        return [row for row in self.results if row.error is not None]


def _usage(data: Mapping[str, Any] | None) -> Usage | None:
    raw = data.get("usage") if data else None
    if not isinstance(raw, dict):
        return None
    try:
        return Usage.model_validate(raw)
    except ValueError:
        return None


class _ItemRunner:
    def __init__(self, pool: ServerPool, options: BatchOptions, validator: Validator | None) -> None:
        self.pool = pool
        self.options = options
        self.validator = validator
        self.backoff = Backoff(options.backoff_base, 2.0, options.backoff_cap)
        self.rng = random.Random(options.jitter_seed)

    def body(self, item: BatchItem, server: Server, schema_retry: int) -> dict[str, Any]:
        body: dict[str, Any] = {}
        model = self.options.model or server.model
        if model:
            body["model"] = model
        if item.is_chat:
            body["messages"] = item.messages
        else:
            body["prompt"] = item.prompt
        body.update(self.options.defaults)
        body.update(item.params)
        if self.options.wants_json:
            # Seeds are explicit in JSON mode so that each retry samples a different answer.
            seed = item.params.get("seed", self.options.defaults.get("seed", 0))
            body["seed"] = (seed if isinstance(seed, int) else 0) + schema_retry
        return body

    def _row(self, item: BatchItem, attempts: int, attempt: Attempt | None, server: Server | None) -> ResultRow:
        return ResultRow(
            id=item.id,
            server=server.url if server else None,
            attempts=attempts,
            latency_s=round(attempt.latency, 4) if attempt else None,
            usage=_usage(attempt.data) if attempt else None,
            output=attempt.text if attempt else None,
            meta=item.meta,
        )

    async def run(self, item: BatchItem) -> ResultRow:
        path = "/v1/chat/completions" if item.is_chat else "/v1/completions"
        attempts = retries = schema_retries = 0
        failed_on: set[str] = set()
        attempt: Attempt | None = None
        server: Server | None = None
        while True:
            try:
                server = await self.pool.acquire(failed_on)
            except NoServerError as exc:
                row = self._row(item, attempts, attempt, server)
                row.error = ErrorInfo(type="no_server", message=str(exc))
                return row
            try:
                attempts += 1
                attempt = await self.pool.request(
                    server, path, self.body(item, server, schema_retries), chat=item.is_chat
                )
            finally:
                self.pool.release(server)
            row = self._row(item, attempts, attempt, server)
            if attempt.kind == "ok":
                if not self.options.wants_json:
                    return row
                try:
                    row.parsed = parse_output(attempt.text or "", self.validator)
                    return row
                except OutputError as exc:
                    schema_retries += 1
                    if schema_retries > self.options.max_schema_retries:
                        row.error = ErrorInfo(type="schema", message=str(exc))
                        return row
                    continue
            row.output = None
            row.error = ErrorInfo(type=attempt.kind, message=attempt.message, status=attempt.status)
            if not attempt.retryable:
                return row
            retries += 1
            if retries > self.options.max_retries:
                return row
            failed_on.add(server.url)
            await asyncio.sleep(self.backoff.delay(retries - 1, self.rng))


def _prepare(
    items: Iterable[BatchItem | Mapping[str, Any]], skip_ids: Collection[ItemId]
) -> tuple[list[BatchItem], list[BatchItem]]:
    parsed = unique(parse_item(dict(item) if isinstance(item, Mapping) else item) for item in items)
    skip = {id_key(item_id) for item_id in skip_ids}
    return parsed, [item for item in parsed if id_key(item.id) not in skip]


async def run_batch(
    items: Iterable[BatchItem | Mapping[str, Any]],
    servers: Iterable[str],
    options: BatchOptions | None = None,
    *,
    skip_ids: Collection[ItemId] = (),
    on_result: ResultCallback | None = None,
    client: httpx.AsyncClient | None = None,
) -> BatchReport:
    """Run every item (except `skip_ids`) against `servers`; return the results and a summary.

    Items are BatchItem or dicts (`{"id", "prompt" | "messages", ...params}`); servers are base URLs
    of piBLOOM or any OpenAI-compatible server. `on_result` (sync or async) sees each result as it
    finishes, e.g. to write it out; results come in completion order.
    """
    options = options or BatchOptions()
    urls = list(dict.fromkeys(normalize_url(url) for url in servers))
    if not urls:
        raise ValueError("no servers given")
    everything, pending = _prepare(items, skip_ids)
    validator = make_validator(options.json_schema) if options.json_schema is not None else None
    total = options.concurrency or options.per_server * len(urls)
    own_client = client is None
    if client is None:
        # Room for every request in flight plus health checks, so httpx never queues a request.
        limits = httpx.Limits(max_connections=total + 2 * len(urls), max_keepalive_connections=total + len(urls))
        client = httpx.AsyncClient(limits=limits)
    pool = ServerPool(urls, client, options)
    runner = _ItemRunner(pool, options, validator)
    summary = Summary(total=len(everything), skipped=len(everything) - len(pending))
    results: list[ResultRow] = []
    queue = iter(pending)
    started = time.monotonic()

    async def emit(row: ResultRow) -> None:
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
