"""Server selection and ejection rules of the pool, driven directly with a controllable clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from pibloom.client.options import BatchOptions
from pibloom.client.pool import Attempt, NoServerError, ServerPool

URLS = ["http://a:1", "http://b:1", "http://c:1"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def make_pool(client: httpx.AsyncClient, clock: Clock, **options: object) -> ServerPool:
    pool = ServerPool(URLS, client, BatchOptions.model_validate(options), clock=clock)
    for server in pool.servers:
        server.ready = True
    return pool


async def test_least_outstanding_fills_evenly_and_refills_the_freed_server(client: httpx.AsyncClient) -> None:
    pool = make_pool(client, Clock(), per_server=4)
    taken = [await pool.acquire() for _ in range(6)]
    assert [s.url for s in taken] == URLS + URLS
    b = pool.servers[1]
    pool.release(b)
    assert (await pool.acquire()) is b


async def test_slow_servers_get_proportionally_less(client: httpx.AsyncClient) -> None:
    pool = make_pool(client, Clock(), per_server=8)
    a, b, c = pool.servers
    a.latency_ewma, b.latency_ewma, c.latency_ewma = 0.25, 0.25, 1.0  # c is four times slower
    picks = [(await pool.acquire()).url[7] for _ in range(12)]
    # c's first request costs as much as a fifth one on a or b; its second as much as an eighth.
    assert "".join(picks) == "ababababcaba"


async def test_round_robin_cycles_and_skips_unavailable(client: httpx.AsyncClient) -> None:
    pool = make_pool(client, Clock(), strategy="round-robin", per_server=10)
    pool.servers[1].ready = False
    picks = []
    for _ in range(4):
        server = await pool.acquire()
        picks.append(server.url)
        pool.release(server)
    assert picks == ["http://a:1", "http://c:1", "http://a:1", "http://c:1"]


async def test_per_server_bound_makes_callers_wait_for_a_release(client: httpx.AsyncClient) -> None:
    pool = make_pool(client, Clock(), per_server=1)
    held = [await pool.acquire() for _ in range(3)]
    waiter = asyncio.ensure_future(pool.acquire())
    for _ in range(5):
        await asyncio.sleep(0)  # let the waiter run: with every slot taken it cannot finish
    assert not waiter.done()
    pool.release(held[2])
    assert (await asyncio.wait_for(waiter, 5)) is held[2]


async def test_retries_avoid_servers_that_failed_the_item(client: httpx.AsyncClient) -> None:
    pool = make_pool(client, Clock(), per_server=4)
    assert (await pool.acquire(exclude={"http://a:1"})).url == "http://b:1"
    for server in pool.servers[1:]:
        server.ready = False
    # Only the excluded server is left: better to retry there than to fail.
    assert (await pool.acquire(exclude={"http://a:1"})).url == "http://a:1"


async def test_retry_after_pauses_a_server_until_the_time_passes(client: httpx.AsyncClient) -> None:
    clock = Clock()
    pool = make_pool(client, clock, per_server=4)
    a = pool.servers[0]
    pool._record(a, Attempt("http", 0.01, status=503, retry_after=2.0))
    assert a.usable and not a.ejected  # busy, not broken
    assert pool.pick(exclude={"http://b:1", "http://c:1"}) is None
    clock.now += 2.0
    assert pool.pick(exclude={"http://b:1", "http://c:1"}) is a


async def test_refused_connection_ejects_at_once_and_cooldown_doubles(client: httpx.AsyncClient) -> None:
    clock = Clock()
    pool = make_pool(client, clock, eject_cooldown=2.0, eject_cooldown_cap=5.0)
    a = pool.servers[0]
    pool._record(a, Attempt("connection", 0.0, message="refused", down=True))
    assert a.ejected and not a.usable and a.probe_after == clock.now + 2.0
    pool.eject(a)  # the health check after the cooldown failed too
    assert a.probe_after == clock.now + 4.0
    pool.eject(a)
    assert a.probe_after == clock.now + 5.0  # capped
    assert a.stats.ejections == 1  # one ejection, extended twice
    # A passing health check before the cooldown ends does not re-admit it; after it, it does.
    assert pool._set_ready(a, True) is False and a.ejected
    clock.now += 5.0
    assert pool._set_ready(a, True) is True and a.usable


async def test_repeated_failures_eject_and_cancel_work_in_flight(client: httpx.AsyncClient) -> None:
    pool = make_pool(client, Clock(), max_failures=3, health_interval=60)
    a = pool.servers[0]
    hanging: asyncio.Future[httpx.Response] = asyncio.get_running_loop().create_future()
    a.inflight.add(hanging)
    for _ in range(2):
        pool._record(a, Attempt("timeout", 5.0, message="slow"))
    assert not a.ejected and a.failures == 2
    pool._record(a, Attempt("http", 0.1, status=500, message="boom"))
    assert a.ejected and hanging.cancelled()
    await pool.close()


async def test_client_errors_do_not_count_against_the_server(client: httpx.AsyncClient) -> None:
    pool = make_pool(client, Clock(), max_failures=1)
    a = pool.servers[0]
    pool._record(a, Attempt("http", 0.1, status=400, message="bad input"))
    assert not a.ejected and a.failures == 0


async def test_no_usable_server_fails_after_the_wait(client: httpx.AsyncClient) -> None:
    clock = Clock()
    pool = make_pool(client, clock, wait=30.0)
    for server in pool.servers:
        pool.eject(server)
    waiter = asyncio.ensure_future(pool.acquire())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    clock.now += 30.0
    pool._notify()
    with pytest.raises(NoServerError, match=r"no server ready for 30s: http://a:1 \(ejected\)"):
        await asyncio.wait_for(waiter, 5)
