"""`pibloom serve` with two gunicorn workers: one scrape adds up both, whichever worker answers it,
and every metric the Grafana dashboard queries is one the server exports."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from scraping import scrape, value
from support import free_port, pibloom_serve, wait_for

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "pibloom.json"
# Queried by the dashboard's nginx panel, exported by nginx-prometheus-exporter from stub_status
# (not by the api): the names that exporter documents for open-source nginx.
NGINX_EXPORTER = {
    "nginx_up",
    "nginx_connections_accepted",
    "nginx_connections_active",
    "nginx_connections_handled",
    "nginx_connections_reading",
    "nginx_connections_waiting",
    "nginx_connections_writing",
    "nginx_http_requests_total",
}
REQUESTS = 6


@pytest.fixture(scope="module")
def two_workers(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, Path]]:
    """A two-worker server after a known load of REQUESTS completions; yields (url, master pid, metrics dir)."""
    tmp = tmp_path_factory.mktemp("two-workers")
    metrics_dir = tmp / "metrics"
    metrics_dir.mkdir()
    # A counter file left by an earlier run: it must not add to this run's figures.
    (metrics_dir / "counter_1.db").write_bytes(b"\0" * 64)
    env = {"PIBLOOM_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with pibloom_serve(tiny_model_dir, tmp, **env) as (proc, url, _log):
        # Both workers have loaded the model once the replica reports two live engines.
        wait_for(lambda: value(scrape(url), "pibloom_engine_up") == 2, timeout=120, what="both workers")
        body = {"model": "tiny-bloom", "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        codes: list[int] = []

        def post() -> None:
            codes.append(httpx.post(f"{url}/v1/completions", json=body, timeout=120).status_code)

        threads = [threading.Thread(target=post) for _ in range(REQUESTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert codes == [200] * REQUESTS
        yield url, proc.pid, metrics_dir


def test_every_scrape_counts_both_workers(two_workers: tuple[str, int, Path]) -> None:
    url, master, metrics_dir = two_workers
    assert not (metrics_dir / "counter_1.db").exists()
    for _ in range(6):  # each scrape may land on either worker: all must agree
        samples = scrape(url)
        assert value(samples, "pibloom_request_success_total") == REQUESTS
        assert value(samples, "pibloom_request_e2e_latency_seconds_count") == 0  # vLLM's name, not this
        assert value(samples, "pibloom_e2e_request_latency_seconds_count") == REQUESTS
        assert value(samples, "pibloom_request_queue_time_seconds_count") == REQUESTS
        assert value(samples, "pibloom_engine_up") == 2
        assert value(samples, "pibloom_ready") == 1
    workers = psutil.Process(master).children()
    assert len(workers) == 2
    # Process figures are the replica's: the master and both workers.
    assert value(samples, "pibloom_replica_processes") == 3
    rss = sum(p.memory_info().rss for p in [psutil.Process(master), *workers])
    assert value(samples, "process_resident_memory_bytes") == pytest.approx(rss, rel=0.2)
    assert value(samples, "process_open_fds") > 3 * 3


def test_a_dead_workers_gauges_go_and_its_counts_stay(two_workers: tuple[str, int, Path]) -> None:
    url, master, _ = two_workers
    victim = psutil.Process(master).children()[0]
    os.kill(victim.pid, signal.SIGKILL)
    # gunicorn starts a replacement, which loads the model: two live engines again, not three.
    wait_for(lambda: victim.pid not in [p.pid for p in psutil.Process(master).children()], what="the worker to go")
    wait_for(lambda: len(psutil.Process(master).children()) == 2, timeout=60, what="a new worker")
    wait_for(lambda: value(scrape(url), "pibloom_engine_up") == 2, timeout=120, what="the new worker's engine")
    samples = scrape(url)
    assert value(samples, "pibloom_engine_up") == 2
    assert value(samples, "pibloom_request_success_total") == REQUESTS


def dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    names: set[str] = set()
    for expr in exprs:
        # Every series the dashboard reads is piBLOOM's, a process figure or nginx's; label names
        # (model_name, le...) have none of these prefixes.
        found = set(re.findall(r"\b((?:pibloom|process|nginx)_[a-z0-9_]+)\b", expr))
        assert found, f"no metric found in {expr!r}"
        names |= found
    return names


def test_the_dashboard_queries_only_exported_metrics(two_workers: tuple[str, int, Path]) -> None:
    url, _, _ = two_workers
    exported = {name for name, _ in scrape(url)}
    queried = dashboard_metrics()
    nginx = {n for n in queried if n.startswith("nginx_")}
    assert nginx <= NGINX_EXPORTER
    missing = queried - nginx - exported
    assert not missing, f"the dashboard queries metrics the server does not export: {sorted(missing)}"
    # The panels the issue asks for are there.
    for wanted in (
        "pibloom_generation_tokens_total",
        "pibloom_time_to_first_token_seconds_bucket",
        "pibloom_inter_token_latency_seconds_bucket",
        "pibloom_num_requests_waiting",
        "pibloom_num_requests_running",
        "pibloom_kv_cache_usage_perc",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "pibloom_request_duration_seconds_count",
    ):
        assert wanted in queried, wanted


def test_the_dashboard_check_sees_a_misspelt_metric() -> None:
    assert "pibloom_num_requests_waitin" not in dashboard_metrics()


def test_the_metrics_port_serves_all_workers_and_the_main_port_none(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {"PIBLOOM_WORKERS": "2", "PIBLOOM_METRICS_PORT": str(port)}
    with pibloom_serve(tiny_model_dir, tmp_path, **env) as (_proc, url, _log):
        metrics_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: value(scrape(metrics_url), "pibloom_engine_up") == 2, timeout=120, what="both workers")
        body = {"model": "tiny-bloom", "prompt": "Hi", "max_tokens": 2}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
        assert httpx.get(f"{url}/metrics").status_code == 404
        assert value(scrape(metrics_url), "pibloom_request_success_total") == 1
