"""PIBLOOM_RATE_LIMIT_STORAGE: one client's allowance is the same behind one api process or two, and
the api keeps serving (fails open) while Redis is down."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from support import ServerFactory, free_port, pibloom_serve, wait_for

LIMIT = 4


@contextlib.contextmanager
def redis_server(port: int, folder: Path) -> Iterator[redis.Redis]:
    """Debian's redis-server on a loopback port, nothing persisted; yields a client."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    assert Path(exe).exists(), "redis-server missing: run `make system-deps` (Debian package redis-server)"
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)]
    proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_for(answers, what="redis-server to answer")
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def statuses(urls: list[str], count: int) -> list[int]:
    """`count` rate-limited requests from one client, spread round-robin over `urls`."""
    return [httpx.get(f"{urls[i % len(urls)]}/v1/models", timeout=10).status_code for i in range(count)]


def test_the_allowance_is_the_same_with_one_replica_or_two(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    with redis_server(port, tmp_path) as store:
        env = {"PIBLOOM_RATE_LIMIT": f"{LIMIT}/minute", "PIBLOOM_RATE_LIMIT_STORAGE": f"redis://127.0.0.1:{port}/0"}
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        with (
            pibloom_serve(tiny_model_dir, tmp_path / "a", **env) as (_a, url_a, _),
            pibloom_serve(tiny_model_dir, tmp_path / "b", **env) as (_b, url_b, _),
        ):
            one = statuses([url_a], LIMIT + 3)
            store.flushdb()
            two = statuses([url_a, url_b], LIMIT + 3)
            refused = httpx.get(f"{url_b}/v1/models", timeout=10)
    assert one == [200] * LIMIT + [429] * 3
    # Per-process buckets would have let all 7 through (4 went to one process, 3 to the other).
    assert two == one
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_the_api_keeps_serving_while_redis_is_down(
    server_factory: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens there yet
    settings = {"rate_limit": "2/minute", "rate_limit_storage": f"redis://127.0.0.1:{port}/0"}
    with caplog.at_level(logging.WARNING), server_factory(**settings) as (url, host):
        # Fail open: more than the limit gets through, none as an error.
        assert statuses([url], 5) == [200] * 5
        errors = host.metrics.registry.get_sample_value("pibloom_rate_limit_store_errors_total")
        assert errors is not None and errors >= 1
        assert any("rate-limit store unreachable" in r.getMessage() for r in caplog.records)
        # Once Redis answers again, the limit applies again.
        with redis_server(port, tmp_path):
            wait_for(lambda: statuses([url], 1) == [429], timeout=30, what="the limit to apply again")
