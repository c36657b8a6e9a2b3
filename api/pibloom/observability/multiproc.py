"""prometheus-client's multiprocess mode under `pibloom serve`.

Every gunicorn worker writes its metric values into memory-mapped files in PROMETHEUS_MULTIPROC_DIR;
a scrape, answered by any worker (or the master on PIBLOOM_METRICS_PORT), reads all of them, so the
figures are the replica's whatever the worker count. The directory is emptied at start (files from an
earlier run would add stale counts), a worker's live gauges are dropped when it exits, and a directory
made here is removed when the server stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by `pibloom serve`'s gunicorn master to its own pid before it forks workers, which inherit it
# (`process.replica_processes`). Not a setting, hence no PIBLOOM_ prefix: the master's pid.
REPLICA_ROOT = "_PIBLOOM_REPLICA_ROOT"


def prepare(environ: MutableMapping[str, str]) -> tuple[Path, bool]:
    """Choose and empty the directory and export it; returns (path, made here). Call before
    prometheus_client is imported: it reads the variable once, at import."""
    given = environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        owned = False
    else:
        path, owned = Path(tempfile.mkdtemp(prefix="pibloom-metrics-")), True
    environ[ENV] = str(path)
    return path, owned


def activate() -> None:
    """Make metrics created from now on use the files (in case prometheus_client was imported first)."""
    from prometheus_client import values

    if active() and values.ValueClass.__name__ != "MmapedValue":
        values.ValueClass = values.MultiProcessValue()


def active() -> bool:
    return bool(os.environ.get(ENV))


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: the worker's live gauges (waiting, running...) stop counting."""
    from prometheus_client import multiprocess

    if active():
        multiprocess.mark_process_dead(pid)


def cleanup(path: Path, owned: bool) -> None:
    if owned:
        shutil.rmtree(path, ignore_errors=True)
