"""The engine's figures after a known load, read from a real server's /metrics as Prometheus reads them."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx

from pibloom.observability import multiproc

from scraping import scrape, value
from support import ServerFactory, wait_for

PROMPTS = ["Hello there", "The weather today is", "Tell me a story about a cat"]


def test_a_known_load_gives_known_figures(server_factory: ServerFactory) -> None:
    with server_factory() as (url, host):
        usages = []
        for prompt in PROMPTS:
            body = {"model": host.model_name, "prompt": prompt, "max_tokens": 5, "temperature": 0}
            reply = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
            assert reply.status_code == 200, reply.text
            usages.append(reply.json()["usage"])
        samples = scrape(url)
    model = {"model_name": host.model_name}
    prompt_tokens = sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    reasons = {ls: v for (n, ls), v in samples.items() if n == "pibloom_request_success_total"}
    assert sum(reasons.values()) == len(PROMPTS)
    assert all(dict(ls)["finished_reason"] in ("stop", "length") for ls in reasons)
    assert value(samples, "pibloom_prompt_tokens_total", **model) == prompt_tokens
    assert value(samples, "pibloom_generation_tokens_total", **model) == generated
    assert value(samples, "pibloom_request_prompt_tokens_sum", **model) == prompt_tokens
    assert value(samples, "pibloom_request_generation_tokens_sum", **model) == generated
    for phase in ("queue_time", "prefill_time", "decode_time"):
        assert value(samples, f"pibloom_request_{phase}_seconds_count", **model) == len(PROMPTS), phase
    assert value(samples, "pibloom_e2e_request_latency_seconds_count", **model) == len(PROMPTS)
    assert value(samples, "pibloom_time_to_first_token_seconds_count", **model) == len(PROMPTS)
    # Every token after the first of a request is one inter-token interval.
    assert value(samples, "pibloom_inter_token_latency_seconds_count", **model) == generated - len(PROMPTS)
    assert value(samples, "pibloom_num_requests_running", **model) == 0
    assert value(samples, "pibloom_num_requests_waiting", **model) == 0
    assert value(samples, "pibloom_kv_cache_usage_perc", **model) == 0
    assert value(samples, "pibloom_engine_up", **model) == 1
    # This process's own figures (not under `pibloom serve`, so no gunicorn tree to add up).
    assert value(samples, "process_resident_memory_bytes") > 10 * 2**20
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_open_fds") > 0
    assert value(samples, "pibloom_replica_processes") == 1


def test_kv_cache_usage_follows_the_memory_held(server_factory: ServerFactory) -> None:
    with server_factory() as (url, host):
        engine = host.engine
        assert engine is not None
        usage = host.metrics.kv_cache_usage
        body = {"model": host.model_name, "prompt": "Once upon a time", "max_tokens": 900, "temperature": 0}
        body |= {"stream": True}
        seen: list[float] = []
        with httpx.Client(timeout=60) as client, client.stream("POST", f"{url}/v1/completions", json=body) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("data: "):
                pass
            wait_for(lambda: engine.load()["running"] == 1, what="the stream to run")
            seen.append(usage._value.get())
        wait_for(lambda: engine.in_flight == 0, what="the stream to be cancelled")
        wait_for(lambda: usage._value.get() == 0, what="the cache to be empty")
    # One row holding its prompt and the tokens generated so far: a sliver of the budget, not zero.
    assert engine.kv_budget_bytes is not None
    assert 0 < seen[0] <= 0.01
    assert seen[0] * engine.kv_budget_bytes >= 4 * 1024  # at least a few tokens of the tiny model


def test_the_multiprocess_directory_is_emptied_and_removed(tmp_path: Path) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_12345.db").write_bytes(b"stale")
    environ: dict[str, str] = {multiproc.ENV: str(given)}
    path, owned = multiproc.prepare(environ)
    assert (path, owned) == (given, False)
    assert list(given.iterdir()) == []
    multiproc.cleanup(path, owned)
    assert given.is_dir()  # the operator's directory stays

    environ = {}
    path, owned = multiproc.prepare(environ)
    assert owned and path.is_dir() and environ[multiproc.ENV] == str(path)
    multiproc.cleanup(path, owned)
    assert not path.exists()


def test_concurrent_requests_are_counted_once_each(server_factory: ServerFactory) -> None:
    with server_factory() as (url, host):
        body = {"model": host.model_name, "prompt": "Count", "max_tokens": 3, "temperature": 0}
        codes: list[int] = []
        threads = [
            threading.Thread(target=lambda: codes.append(httpx.post(f"{url}/v1/completions", json=body).status_code))
            for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        samples = scrape(url)
    assert codes == [200] * 6
    assert value(samples, "pibloom_request_success_total") == 6
    assert value(samples, "pibloom_request_queue_time_seconds_count") == 6
