"""`pibloom serve`: gunicorn managing uvicorn workers, configured from Settings.

The command reads the settings, then replaces itself (exec, same pid) with the gunicorn master of
`master`, handing it the gunicorn options it derived. The master only forks and watches workers; what
it imports, every worker holds twice over (its own copy, and the master's). Each worker reads the
settings again from the same environment and builds the app (`worker_app`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from ..settings import Settings
from . import master
from .logs import configure_logging


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    s = settings
    return {
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


def serve(settings: Settings, metrics_dir: tuple[Path, bool] | None = None) -> NoReturn:
    """Exec the gunicorn master; with `metrics_dir` (from multiproc.prepare) the workers share their
    metrics, and the master serves them on `metrics_port` where one is set."""
    plan = master.Plan(
        options=gunicorn_options(settings),
        log_json=settings.log_json,
        log_level=settings.log_level,
        metrics_dir=None if metrics_dir is None else (str(metrics_dir[0]), metrics_dir[1]),
        metrics_address=None if settings.metrics_port is None else (settings.host, settings.metrics_port),
    )
    sys.stdout.flush()
    sys.stderr.flush()
    environment = {**os.environ, master.PLAN: json.dumps(plan._asdict())}
    os.execve(sys.executable, [sys.executable, "-m", "pibloom.http.master"], environment)


def worker_app() -> Any:
    """The app of one worker, built after the fork from the settings in the environment."""
    from .app import create_app

    settings = Settings()
    configure_logging(settings)
    return create_app(settings)
