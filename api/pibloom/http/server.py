"""`pibloom serve`: gunicorn managing uvicorn workers, configured from Settings."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from ..settings import Settings
from .logs import configure_logging


class GunicornServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
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
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .app import create_app

        configure_logging(self.settings)
        return create_app(self.settings)


def serve(settings: Settings) -> None:
    configure_logging(settings)
    GunicornServer(settings).run()
