"""`pibloom serve`: gunicorn managing uvicorn workers, configured from Settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from ..observability import multiproc
from ..observability.process import set_replica_root
from ..settings import Settings
from .logs import configure_logging


class GunicornServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings, hooks: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.hooks = hooks or {}
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"{s.host}:{s.port}",
            "workers": s.workers,
            "worker_class": "uvicorn_worker.UvicornWorker",
            "timeout": s.timeout,
            "graceful_timeout": s.graceful_timeout,
            "keepalive": s.keepalive,
            "loglevel": s.log_level,
            "accesslog": "-",
            "errorlog": "-",
            # The app object is built per worker after fork; nothing heavy happens before that.
            "preload_app": False,
            # Several servers may share a host (replicas, tests); a shared ~/.gunicorn socket would clash.
            "control_socket_disable": True,
            # Only these peers may set X-Forwarded-For (the rate limiter and logs key on the client).
            "forwarded_allow_ips": ",".join(s.trusted_proxies) or "127.0.0.1",
        }
        options.update(self.hooks)
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        configure_logging(self.settings)
        return create_app(self.settings)


def serve(settings: Settings, metrics_dir: tuple[Path, bool] | None = None) -> None:
    """Run gunicorn; with `metrics_dir` (from multiproc.prepare) the workers share their metrics."""
    configure_logging(settings)
    hooks: dict[str, Any] = {}
    if metrics_dir is not None:
        multiproc.activate()
        set_replica_root(os.getpid())
        hooks["child_exit"] = lambda _arbiter, worker: multiproc.worker_exited(worker.pid)
        hooks["on_exit"] = lambda _arbiter: multiproc.cleanup(*metrics_dir)
        if settings.metrics_port is not None:
            from ..observability.exposition import serve_metrics_port

            metrics_server, _ = serve_metrics_port(settings.host, settings.metrics_port)
            # Workers inherit the listening socket at fork; only the master answers on it.
            hooks["post_fork"] = lambda _arbiter, _worker: metrics_server.socket.close()
    GunicornServer(settings, hooks).run()
