"""One scrape: the app's (or every worker's) metrics plus the replica's process figures."""

from __future__ import annotations

from collections.abc import Iterator
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from . import multiproc
from .process import ReplicaProcessCollector


class _Scrape(Collector):
    def __init__(self, metrics: Collector) -> None:
        self.metrics = metrics
        self.process = ReplicaProcessCollector()

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.collect()
        yield from self.process.collect()


def scrape_registry(app_registry: CollectorRegistry) -> Collector:
    """What /metrics shows: under multiprocess mode every worker's files, else this app's registry."""
    if multiproc.active():
        merged = CollectorRegistry()
        MultiProcessCollector(merged)
        return _Scrape(merged)
    return _Scrape(app_registry)


def render(app_registry: CollectorRegistry) -> bytes:
    return generate_latest(scrape_registry(app_registry))  # type: ignore[arg-type]


def serve_metrics_port(host: str, port: int) -> tuple[WSGIServer, Thread]:
    """prometheus-client's own HTTP server, in gunicorn's master: the workers' files, on a port of its own."""
    return start_http_server(port, addr=host, registry=scrape_registry(CollectorRegistry()))  # type: ignore[arg-type]
