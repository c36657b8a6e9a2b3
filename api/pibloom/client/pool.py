"""The server pool: who is alive, who gets the next request, and what a failure does to a server.

Each server is *usable* when its last health check passed and it is not ejected, and *available*
when it is usable, not paused by a Retry-After, and below its in-flight bound. Selection is by least
outstanding work: in-flight count weighted by how slow the server has been (latency EWMA relative to
the fastest), so a slow server gets proportionally less; round robin is the alternative.

A server that answers 404 on the endpoint a run needs (a generic OpenAI server asked for /v1/score)
is *unsupported*: it gets no more work in that run.

A connection refused ejects a server at once, other failures after `max_failures` in a row; a health
check that times out means the machine hangs, and also ejects it. Ejection cancels its in-flight
requests so they are retried elsewhere instead of waiting out the request timeout. An ejected server
is health-checked again after a cooldown that doubles with each ejection in a row, and re-admitted
when the check passes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from .options import BatchOptions
from .retry import is_retryable_status, parse_retry_after

# Turns a successful answer's JSON into the attempt's value; a ValueError means a malformed answer.
Reader = Callable[[Any], Any]
AttemptKind = Literal["ok", "http", "timeout", "connection", "ejected", "bad_response"]
EWMA_WEIGHT = 0.3
HEALTH_PATH = "/health/ready"
MODELS_PATH = "/v1/models"


class NoServerError(RuntimeError):
    """No server has been usable for longer than `wait`."""


class UnsupportedError(NoServerError):
    """Every server lacks the endpoint the run needs."""


@dataclass
class ServerStats:
    requests: int = 0
    ok: int = 0
    errors: int = 0
    ejections: int = 0
    latency_total: float = 0.0


@dataclass(eq=False)
class Server:
    url: str
    model: str | None = None
    ready: bool = False
    ejected: bool = False
    probe_after: float = 0.0
    paused_until: float = 0.0
    outstanding: int = 0
    failures: int = 0
    eject_streak: int = 0
    latency_ewma: float | None = None
    # Why it cannot do this run's work at all (e.g. "no /v1/score"); None while it can.
    unsupported: str | None = None
    # False once the server has refused `response_format` (400 naming it): JSON jobs then validate
    # and retry instead of asking the server to enforce the schema.
    structured: bool = True
    # Set to None once the server has shown it has no /health/ready (a generic OpenAI server).
    health_path: str | None = HEALTH_PATH
    inflight: set[asyncio.Future[httpx.Response]] = field(default_factory=set)
    stats: ServerStats = field(default_factory=ServerStats)

    @property
    def usable(self) -> bool:
        return self.ready and not self.ejected and self.unsupported is None


@dataclass
class Attempt:
    """The outcome of one HTTP request."""

    kind: AttemptKind
    latency: float
    status: int | None = None
    # What the reader made of a successful answer (the output text, a score).
    value: Any = None
    data: dict[str, Any] | None = None
    message: str = ""
    code: str | None = None
    retry_after: float | None = None
    # Refused or no TCP handshake: the machine or process is down, not just slow.
    down: bool = False

    @property
    def retryable(self) -> bool:
        if self.kind == "ok":
            return False
        if self.kind == "http":
            return self.status is not None and is_retryable_status(self.status)
        return True


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_code(response: httpx.Response) -> str | None:
    """OpenAI's error.code (e.g. model_not_found), if the error body has one."""
    data = _json(response)
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def error_message(response: httpx.Response) -> str:
    """The server's own words for an error: OpenAI's error.message, FastAPI's detail, or the text."""
    data = _json(response)
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "detail" in data:
            return str(data["detail"])[:500]
    return (response.text or response.reason_phrase)[:500]


def answer_text(data: Any, chat: bool) -> str | None:
    """choices[0].message.content (chat) or choices[0].text (completion); None if the shape is wrong."""
    try:
        first = data["choices"][0]
        text = first["message"]["content"] if chat else first["text"]
    except (KeyError, IndexError, TypeError):
        return None
    return text if isinstance(text, str) else None


def text_reader(chat: bool) -> Reader:
    def read(data: Any) -> str:
        text = answer_text(data, chat)
        if text is None:
            raise ValueError("answer is not OpenAI-shaped")
        return text

    return read


def first_model(data: Any) -> str | None:
    try:
        model = data["data"][0]["id"]
    except (KeyError, IndexError, TypeError):
        return None
    return model if isinstance(model, str) else None


class ServerPool:
    def __init__(
        self,
        urls: Collection[str],
        client: httpx.AsyncClient,
        options: BatchOptions,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("no servers given")
        self.servers = [Server(url) for url in urls]
        self.options = options
        self._client = client
        self._clock = clock
        self._headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
        self._timeout = httpx.Timeout(options.timeout, connect=min(options.connect_timeout, options.timeout))
        self._changed = asyncio.Event()
        self._rr_next = 0
        self._unusable_since: float | None = clock()
        self._health_task: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Task[bool]] = {}

    # --- selection -----------------------------------------------------------------------------

    def _notify(self) -> None:
        """Wake every waiter in acquire(); they re-check the pool."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def _update_usability(self) -> None:
        now = self._clock()
        if any(server.usable for server in self.servers):
            self._unusable_since = None
        elif self._unusable_since is None:
            self._unusable_since = now

    def _available(self, server: Server, now: float) -> bool:
        return server.usable and now >= server.paused_until and server.outstanding < self.options.per_server

    def _load(self, server: Server, fastest: float | None) -> float:
        slowness = 1.0
        if server.latency_ewma is not None and fastest:
            slowness = server.latency_ewma / fastest
        return (server.outstanding + 1) * slowness

    def pick(self, exclude: Collection[str] = (), now: float | None = None) -> Server | None:
        """The server for the next request, or None when the caller should wait.

        Servers in `exclude` (those that already failed this item) are used only when no other
        server is usable at all, so a retry goes elsewhere when it can.
        """
        now = self._clock() if now is None else now
        free = [server for server in self.servers if self._available(server, now)]
        candidates = [server for server in free if server.url not in exclude]
        if not candidates:
            if any(server.usable and server.url not in exclude for server in self.servers):
                return None
            candidates = free
        if not candidates:
            return None
        if self.options.strategy == "round-robin":
            count = len(self.servers)
            for offset in range(count):
                index = (self._rr_next + offset) % count
                if self.servers[index] in candidates:
                    self._rr_next = index + 1
                    return self.servers[index]
        known = [s.latency_ewma for s in self.servers if s.usable and s.latency_ewma is not None]
        fastest = min(known) if known else None
        return min(candidates, key=lambda server: self._load(server, fastest))

    async def acquire(self, exclude: Collection[str] = ()) -> Server:
        """Wait for a server with room and take one slot on it; release() gives it back."""
        while True:
            now = self._clock()
            self._update_usability()
            server = self.pick(exclude, now)
            if server is not None:
                server.outstanding += 1
                return server
            if all(s.unsupported is not None for s in self.servers):
                reasons = " / ".join(sorted({s.unsupported or "" for s in self.servers}))
                raise UnsupportedError(f"server has {reasons}: {', '.join(s.url for s in self.servers)}")
            if self._unusable_since is not None and now - self._unusable_since >= self.options.wait:
                raise NoServerError(f"no server ready for {self.options.wait:g}s: {self.describe()}")
            wake = [self.options.health_interval]
            wake += [s.paused_until - now for s in self.servers if s.usable and s.paused_until > now]
            if self._unusable_since is not None:
                wake.append(self._unusable_since + self.options.wait - now)
            # asyncio.wait, not wait_for: on Python < 3.12, wait_for can swallow this task's own
            # cancellation when it lands as the timeout fires, and Ctrl-C then went unnoticed.
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({changed}, timeout=max(min(wake), 0.001))
            finally:
                changed.cancel()

    def release(self, server: Server) -> None:
        server.outstanding -= 1
        self._notify()

    def mark_unsupported(self, server: Server, reason: str) -> None:
        """Give `server` no more work this run: it lacks what the run needs (e.g. "no /v1/score")."""
        server.unsupported = reason
        self._update_usability()
        self._notify()

    def describe(self) -> str:
        parts = []
        for server in self.servers:
            state = "ejected" if server.ejected else "ready" if server.ready else "not ready"
            if server.unsupported is not None:
                state = server.unsupported
            parts.append(f"{server.url} ({state})")
        return ", ".join(parts)

    # --- requests ------------------------------------------------------------------------------

    async def request(self, server: Server, path: str, body: dict[str, Any], read: Reader) -> Attempt:
        """POST one request to `server` and classify the outcome (`read` parses a successful answer);
        updates the server's health."""
        start = self._clock()
        call = asyncio.ensure_future(
            self._client.post(server.url + path, json=body, headers=self._headers, timeout=self._timeout)
        )
        server.inflight.add(call)
        try:
            # asyncio.wait, unlike awaiting the task, tells ejection (call cancelled) from this
            # coroutine itself being cancelled (CancelledError raised here).
            await asyncio.wait({call})
        finally:
            server.inflight.discard(call)
            if not call.done():
                call.cancel()
        latency = self._clock() - start
        attempt = self._classify(call, latency, read, server)
        self._record(server, attempt)
        return attempt

    def _classify(self, call: asyncio.Future[httpx.Response], latency: float, read: Reader, server: Server) -> Attempt:
        if call.cancelled():
            return Attempt("ejected", latency, message=f"{server.url} was ejected while the request ran")
        exc = call.exception()
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            reason = "connect timeout" if isinstance(exc, httpx.ConnectTimeout) else f"cannot connect: {exc}"
            return Attempt("connection", latency, message=reason.rstrip(": "), down=True)
        if isinstance(exc, httpx.TimeoutException):
            return Attempt("timeout", latency, message=f"no answer within {self.options.timeout:g}s")
        if isinstance(exc, httpx.TransportError):
            return Attempt("connection", latency, message=f"{type(exc).__name__}: {exc}".rstrip(": "))
        if exc is not None:
            raise exc
        response = call.result()
        if not response.is_success:
            return Attempt(
                "http",
                latency,
                status=response.status_code,
                message=error_message(response),
                code=error_code(response),
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        data = _json(response)
        try:
            value = read(data)
        except ValueError as exc:
            return Attempt("bad_response", latency, status=response.status_code, message=str(exc))
        return Attempt("ok", latency, status=response.status_code, value=value, data=data)

    def _record(self, server: Server, attempt: Attempt) -> None:
        now = self._clock()
        stats = server.stats
        stats.requests += 1
        if attempt.kind == "ok" or (attempt.kind == "http" and not attempt.retryable):
            # A 4xx is the input's fault: the server itself answered fine.
            stats.ok += attempt.kind == "ok"
            stats.errors += attempt.kind != "ok"
            server.failures = 0
            server.eject_streak = 0
            if attempt.kind == "ok":
                stats.latency_total += attempt.latency
                previous = server.latency_ewma
                server.latency_ewma = (
                    attempt.latency
                    if previous is None
                    else (1 - EWMA_WEIGHT) * previous + EWMA_WEIGHT * attempt.latency
                )
            return
        stats.errors += 1
        if attempt.kind == "ejected":
            return
        overloaded = attempt.kind == "http" and attempt.status in (429, 503)
        if overloaded and (attempt.retry_after is not None or attempt.status == 429):
            # Busy, not broken: keep it, but honour the pause it asked for.
            pause = attempt.retry_after if attempt.retry_after is not None else self.options.default_pause
            server.paused_until = max(server.paused_until, now + pause)
            self._notify()
            return
        if attempt.down:
            self.eject(server)
            return
        server.failures += 1
        if server.failures >= self.options.max_failures:
            self.eject(server)
        else:
            self.probe_soon(server)

    def eject(self, server: Server) -> None:
        """Take a server out until a health check passes after its cooldown (longer each time)."""
        if not server.ejected:
            server.stats.ejections += 1
        server.ejected = True
        server.ready = False
        cooldown = self.options.eject_cooldown * 2 ** min(server.eject_streak, 30)
        server.eject_streak += 1
        server.probe_after = self._clock() + min(cooldown, self.options.eject_cooldown_cap)
        for call in list(server.inflight):
            call.cancel()
        self._update_usability()
        self._notify()

    # --- health --------------------------------------------------------------------------------

    async def probe(self, server: Server) -> bool:
        """Health-check one server: /health/ready, or /v1/models where there is none."""
        timeout = httpx.Timeout(self.options.probe_timeout)
        try:
            if server.health_path is not None:
                response = await self._client.get(server.url + server.health_path, timeout=timeout)
                if response.status_code in (404, 405):
                    server.health_path = None
                elif response.status_code != 200:
                    # Loading or draining: no new work, but what it runs may finish.
                    return self._set_ready(server, False)
            needs_model = self.options.model is None and (server.model is None or server.ejected)
            if server.health_path is None or needs_model:
                response = await self._client.get(server.url + MODELS_PATH, headers=self._headers, timeout=timeout)
                if response.status_code != 200:
                    return self._set_ready(server, False)
                try:
                    model = first_model(response.json())
                except ValueError:
                    model = None
                if self.options.model is None and model is None:
                    return self._set_ready(server, False)
                server.model = model
        except httpx.TransportError:
            # Refused, reset or hung (timeout): take it out and move its work elsewhere.
            self.eject(server)
            return False
        return self._set_ready(server, True)

    def _set_ready(self, server: Server, ready: bool) -> bool:
        now = self._clock()
        if ready and server.ejected:
            if now < server.probe_after:
                return False
            server.ejected = False
            server.failures = 0
        server.ready = ready
        self._update_usability()
        self._notify()
        return ready

    def probe_soon(self, server: Server) -> None:
        """Check a server that just failed without waiting for the next round."""
        running = self._probes.get(server.url)
        if running is None or running.done():
            self._probes[server.url] = asyncio.ensure_future(self.probe(server))

    async def check_all(self) -> None:
        now = self._clock()
        due = [server for server in self.servers if not server.ejected or now >= server.probe_after]
        await asyncio.gather(*(self.probe(server) for server in due))

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.health_interval)
            await self.check_all()

    async def start(self) -> None:
        await self.check_all()
        self._health_task = asyncio.ensure_future(self._health_loop())

    async def close(self) -> None:
        tasks = [task for task in [self._health_task, *self._probes.values()] if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
