"""The hardening middleware on a bare ASGI app (no model): rate limits, body limits, request ids and
client addresses behind proxies."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pibloom.http.auth import KeyRing
from pibloom.http.logs import JsonFormatter, TextFormatter
from pibloom.http.middleware.bodylimit import BodyLimitMiddleware
from pibloom.http.middleware.clients import TrustedProxies
from pibloom.http.middleware.ratelimit import RateLimitMiddleware, TokenBuckets
from pibloom.http.middleware.requestid import RequestIdMiddleware
from pibloom.settings import Settings, parse_rate

log = logging.getLogger("pibloom.test.handler")


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    log.warning("handling")
    return JSONResponse({"size": len(body), "request_id": getattr(request.state, "request_id", None)})


def bare_app() -> Starlette:
    routes = [Route(path, echo, methods=["GET", "POST"]) for path in ("/v1/chat/completions", "/chat/")]
    return Starlette(routes=[*routes, Route("/health/ready", echo)])


def client(app, address: str = "203.0.113.7") -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- settings ----------------------------------------------------------------------------------


def test_rate_limit_setting_parses_and_rejects_nonsense() -> None:
    assert parse_rate("60/minute") == (60, 60.0)
    assert parse_rate("5 / 10s") == (5, 10.0)
    assert parse_rate("1000/hour") == (1000, 3600.0)
    assert Settings(rate_limit="").rate_limit_spec() is None
    for bad in ("fast", "0/minute", "10/fortnight", "-1/s"):
        with pytest.raises(ValidationError, match="rate limit must look like"):
            Settings(rate_limit=bad)
    with pytest.raises(ValidationError, match="not an IP address or network"):
        Settings(trusted_proxies="10.0.0.0/8, proxy.local")


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIBLOOM_RATE_LIMIT", "30/minute")
    monkeypatch.setenv("PIBLOOM_TRUSTED_PROXIES", "10.1.0.0/16, 127.0.0.1")
    monkeypatch.setenv("PIBLOOM_MAX_BODY_BYTES", "4096")
    monkeypatch.setenv("PIBLOOM_METRICS_REQUIRE_KEY", "true")
    s = Settings()
    assert s.rate_limit_spec() == (30, 60.0)
    assert s.trusted_proxies == ["10.1.0.0/16", "127.0.0.1"]
    assert (s.max_body_bytes, s.metrics_require_key) == (4096, True)


# --- token buckets -----------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_refills_at_the_rate() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=2.0, capacity=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token every 0.5 s
    assert buckets.take("b") == 0.0  # another client has its own budget
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(0.5)
    clock.now += 100
    # Refill stops at the burst size.
    assert [buckets.take("a") for _ in range(4)][-1] > 0


def test_bucket_memory_is_bounded() -> None:
    buckets = TokenBuckets(rate=1.0, capacity=1, clock=FakeClock(), max_keys=100)
    for i in range(1000):
        buckets.take(f"client-{i}")
    assert len(buckets) == 100


# --- client address ----------------------------------------------------------------------------


def scope(peer: str, forwarded: str | None = None) -> dict:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded is not None else []
    return {"type": "http", "client": (peer, 1234), "headers": headers}


@pytest.mark.parametrize(
    ("trusted", "peer", "forwarded", "client"),
    [
        ([], "127.0.0.1", "198.51.100.1", "127.0.0.1"),  # nothing trusted: the header is ignored
        (["127.0.0.1"], "203.0.113.9", "198.51.100.1", "203.0.113.9"),  # from an untrusted peer
        (["127.0.0.1"], "127.0.0.1", "198.51.100.1", "198.51.100.1"),
        # The client wrote the left part itself; the trusted proxy appended the address it saw.
        (["127.0.0.1"], "127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1"),
        (["127.0.0.1", "10.0.0.0/8"], "127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3", "198.51.100.1"),
        (["127.0.0.1"], "127.0.0.1", "not-an-ip", "127.0.0.1"),
        (["::1"], "::1", "2001:db8::5", "2001:db8::5"),
        (["127.0.0.1"], "127.0.0.1", None, "127.0.0.1"),
    ],
)
def test_client_address_honours_only_trusted_proxies(
    trusted: list[str], peer: str, forwarded: str | None, client: str
) -> None:
    assert TrustedProxies(trusted).client_address(scope(peer, forwarded)) == client


# --- rate limit middleware ---------------------------------------------------------------------


def limited(clock: FakeClock, keys: list[str] | None = None, trusted: list[str] | None = None) -> RateLimitMiddleware:
    buckets = TokenBuckets(rate=1 / 30, capacity=2, clock=clock)
    return RateLimitMiddleware(
        bare_app(), buckets=buckets, trusted=TrustedProxies(trusted or []), api_keys=KeyRing(keys or [])
    )


async def test_rate_limit_answers_429_with_retry_after_in_each_error_shape() -> None:
    clock = FakeClock()
    async with client(limited(clock)) as http:
        assert [(await http.post("/v1/chat/completions")).status_code for _ in range(2)] == [200, 200]
        refused = await http.post("/v1/chat/completions")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "30"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        # The budget is per client, not per route; non-/v1 routes answer in FastAPI's shape.
        other = await http.post("/chat/")
        assert other.status_code == 429 and "detail" in other.json()
        # Probes are never limited.
        assert (await http.get("/health/ready")).status_code == 200
        clock.now += 30
        assert (await http.post("/v1/chat/completions")).status_code == 200


async def test_rate_limit_is_per_api_key_and_invented_keys_share_the_address_budget() -> None:
    clock = FakeClock()
    app = limited(clock, keys=["alice-key", "bob-key"])
    async with client(app) as http:

        async def post(key: str) -> int:
            response = await http.post("/chat/", headers={"Authorization": f"Bearer {key}"})
            return response.status_code

        assert [await post("alice-key") for _ in range(3)] == [200, 200, 429]
        assert [await post("bob-key") for _ in range(2)] == [200, 200]  # same address, own budget
        assert [await post(f"made-up-{i}") for i in range(3)] == [200, 200, 429]


async def test_rate_limit_counts_the_client_behind_a_trusted_proxy() -> None:
    clock = FakeClock()
    app = limited(clock, trusted=["10.0.0.0/8"])

    async def post(peer: str, forwarded: str) -> int:
        async with client(app, peer) as http:
            response = await http.post("/chat/", headers={"X-Forwarded-For": forwarded})
            return response.status_code

    # Two clients behind one proxy keep separate budgets...
    assert [await post("10.0.0.2", "198.51.100.1") for _ in range(3)] == [200, 200, 429]
    assert await post("10.0.0.2", "198.51.100.2") == 200
    # ...while a client talking directly cannot escape its budget by forging the header.
    assert [await post("203.0.113.5", f"198.51.100.{i + 10}") for i in range(3)] == [200, 200, 429]


# --- body limit --------------------------------------------------------------------------------


async def test_body_limit_refuses_declared_and_chunked_bodies() -> None:
    app = BodyLimitMiddleware(bare_app(), max_bytes=1000)
    async with client(app) as http:
        ok = await http.post("/v1/chat/completions", content=b"x" * 1000)
        assert ok.json()["size"] == 1000
        big = await http.post("/v1/chat/completions", content=b"x" * 1001)
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        assert (await http.post("/chat/", content=b"x" * 5000)).json() == {
            "detail": "Request body too large (limit 1000 bytes)"
        }

        async def chunks(count: int) -> AsyncIterator[bytes]:
            for _ in range(count):
                yield b"y" * 300

        streamed = await http.post("/v1/chat/completions", content=chunks(3))
        assert streamed.json()["size"] == 900  # replayed whole to the route
        assert (await http.post("/v1/chat/completions", content=chunks(4))).status_code == 413


# --- request ids -------------------------------------------------------------------------------


async def test_request_id_is_kept_or_made_and_reaches_the_logs(records: list[logging.LogRecord]) -> None:
    app = RequestIdMiddleware(bare_app(), trusted=TrustedProxies([]))
    async with client(app) as http:
        given = await http.post("/chat/?token=secret-query", headers={"X-Request-ID": "abc-123"})
        made = await http.post("/chat/")
        hostile = await http.post("/chat/", headers={"X-Request-ID": "bad id\nlevel=forged"})
        too_long = await http.post("/chat/", headers={"X-Request-ID": "a" * 129})
    assert given.headers["x-request-id"] == "abc-123" == given.json()["request_id"]
    assert len(made.headers["x-request-id"]) == 32
    for response in (hostile, too_long):
        assert response.headers["x-request-id"] != "bad id\nlevel=forged"
        assert len(response.headers["x-request-id"]) == 32

    handled = [r for r in records if r.name == "pibloom.test.handler"]
    access = [r for r in records if r.name == "pibloom.access"]
    assert [r.request_id for r in handled] == [r.headers["x-request-id"] for r in (given, made, hostile, too_long)]
    assert [r.request_id for r in access] == [r.request_id for r in handled]
    # Both formats carry the id; the access line has the path without its query string.
    line = TextFormatter().format(access[0])
    assert "POST /chat/ 200" in line and "[request_id=abc-123]" in line and "secret-query" not in line
    entry = JsonFormatter().format(access[0])
    assert '"request_id": "abc-123"' in entry and '"status": 200' in entry and "secret-query" not in entry
