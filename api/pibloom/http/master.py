"""The gunicorn master of `pibloom serve`, which the command execs once it has read the settings
(`server.serve`). It imports gunicorn, the worker class and the standard library, not the settings
(pydantic) or the app: 32 against 44 MB resident (measured), and whatever the master holds
before forking, the workers' memory counts again. The app is built in each worker (`load`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from gunicorn.app.base import BaseApplication

from ..observability import multiproc
from .logs import configure_log_output

PLAN = "_PIBLOOM_MASTER_PLAN"  # what `server.serve` hands over; not a setting, hence no PIBLOOM_ prefix


class Plan(NamedTuple):
    options: dict[str, Any]  # gunicorn's settings
    log_json: bool
    log_level: str
    metrics_dir: tuple[str, bool] | None  # the shared metrics directory and whether the command made it
    metrics_address: tuple[str, int] | None  # where the master serves the replica's metrics, if anywhere


class _Master(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from .server import worker_app  # in the worker, after the fork

        return worker_app()


def hooks(plan: Plan) -> dict[str, Any]:
    """gunicorn's hooks for the shared metrics: a worker's live gauges end with it, the directory
    made for them goes when the server stops, and the metrics port is the master's alone."""
    if plan.metrics_dir is None:
        return {}
    path, owned = Path(plan.metrics_dir[0]), plan.metrics_dir[1]
    found: dict[str, Any] = {
        "child_exit": lambda _arbiter, worker: multiproc.worker_exited(worker.pid),
        "on_exit": lambda _arbiter: multiproc.cleanup(path, owned),
    }
    if plan.metrics_address is not None:
        from ..observability.exposition import serve_metrics_port

        metrics_server, _ = serve_metrics_port(*plan.metrics_address)
        # Workers inherit the listening socket at fork; only the master answers on it.
        found["post_fork"] = lambda _arbiter, _worker: metrics_server.socket.close()
    return found


def main() -> None:
    raw = json.loads(os.environ.pop(PLAN))
    plan = Plan(**{**raw, "metrics_dir": raw["metrics_dir"] and tuple(raw["metrics_dir"])})
    plan = plan._replace(metrics_address=plan.metrics_address and tuple(plan.metrics_address))
    configure_log_output(json_lines=plan.log_json, level=plan.log_level)
    os.environ[multiproc.REPLICA_ROOT] = str(os.getpid())
    _Master({**plan.options, **hooks(plan)}).run()


if __name__ == "__main__":
    main()
