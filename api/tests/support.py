"""Helpers shared by the api tests: real servers on loopback ports and polling with a deadline."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import uvicorn

from pibloom.engine.loader import LoadedModel
from pibloom.http.app import create_app
from pibloom.metrics import Metrics
from pibloom.serving.lifecycle import ModelHost
from pibloom.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    settings: Settings, loaded: LoadedModel | None, loader: Callable[[Settings], LoadedModel] | None = None
) -> Iterator[tuple[str, ModelHost]]:
    """A real uvicorn server in a thread; `loaded=None` loads the model (with `loader`) in the lifespan."""
    host = ModelHost(settings, Metrics(), loader) if loader else ModelHost(settings, Metrics())
    if loaded is not None:
        host.attach(loaded)
    app = create_app(settings, host)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", host
    finally:
        server.should_exit = True
        thread.join(30)
        if host.engine is not None:
            host.engine.shutdown(5)


ServerFactory = Callable[..., contextlib.AbstractContextManager[tuple[str, ModelHost]]]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll until `condition()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


PIBLOOM = str(Path(sys.executable).parent / "pibloom")


def http_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def pibloom_serve(model_dir: Path, tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """`pibloom serve` (gunicorn) on `model_dir` as a subprocess, ready; yields (process, url, log path).

    `env` adds PIBLOOM_* settings; the process is killed on the way out if the test left it running.
    """
    port = free_port()
    environ = dict(
        os.environ,
        PIBLOOM_MODEL=str(model_dir),
        PIBLOOM_PORT=str(port),
        PIBLOOM_DTYPE="float32",
        PIBLOOM_CACHE_DIR=str(tmp_path),
        **env,
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([PIBLOOM, "serve"], env=environ, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: http_ready(url), timeout=120, what="pibloom serve to be ready")
            yield proc, url, log_path
        finally:
            if proc.poll() is None:
                # Workers outlive a SIGKILLed master (uvicorn workers do not watch their parent): kill them too.
                with contextlib.suppress(psutil.Error):
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        child.kill()
                proc.kill()
                proc.wait()
