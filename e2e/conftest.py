"""Fixtures that start the real services as local processes on loopback ports.

Each service is started the way `make run` starts it, so these tests exercise the same commands.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Where each service of the stack writes its log (stdout and stderr), for the tests that read them.
LOGS: dict[str, Path] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
    """Poll `url` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- api (lead) ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`pibloom serve` (gunicorn + uvicorn worker) on the embedded default model; yields its base URL."""
    port = free_port()
    # JSON logs, as `make run` (scripts/run-local.sh) and the containers write them.
    env = dict(os.environ, PIBLOOM_PORT=str(port), PIBLOOM_HOST="127.0.0.1", PIBLOOM_MAX_QUEUE="64")
    env.setdefault("PIBLOOM_LOG_JSON", "true")
    LOGS["api"] = tmp_path_factory.mktemp("api") / "api.log"
    log = LOGS["api"].open("wb")
    proc = subprocess.Popen([str(BIN / "pibloom"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready", proc)
        yield base
    finally:
        stop(proc)
        log.close()


# --- web (web) ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def web_server(api_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`node web/server/index.js` serving web/dist and proxying /api to `api_server`; yields its base URL."""
    if not (ROOT / "web" / "dist" / "index.html").is_file():
        pytest.fail("web/dist is not built: run `make setup-web`")
    port = free_port()
    env = dict(os.environ, PORT=str(port), HOST="127.0.0.1", PIBLOOM_API_URL=api_server)
    LOGS["web"] = tmp_path_factory.mktemp("web") / "web.log"
    log = LOGS["web"].open("wb")
    proc = subprocess.Popen(
        ["node", str(ROOT / "web" / "server" / "index.js")], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/healthz", proc, timeout=30)
        yield base
    finally:
        stop(proc)
        log.close()


# --- proxy (stack) ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def proxy_server(api_server: str, web_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's nginx on proxy/nginx.conf.template in front of `api_server` and `web_server`.

    The template is rendered by scripts/render_proxy.py, exactly as `make run` does; yields the base URL.
    """
    # Imported here so this section stays self-contained in the shared conftest.
    import shutil
    from urllib.parse import urlsplit

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert Path(nginx).exists(), "nginx missing: run `make system-deps` (Debian package nginx)"
    run_dir = tmp_path_factory.mktemp("proxy")
    port = free_port()
    render = [
        sys.executable,
        str(ROOT / "scripts" / "render_proxy.py"),
        *("--out", str(run_dir), "--listen", f"127.0.0.1:{port}"),
        *("--api", urlsplit(api_server).netloc, "--web", urlsplit(web_server).netloc),
    ]
    conf = subprocess.run(render, check=True, capture_output=True, text=True).stdout.strip()
    LOGS["proxy"] = run_dir / "nginx.log"
    log = LOGS["proxy"].open("wb")
    cmd = [nginx, "-p", str(run_dir), "-c", conf, "-e", "stderr", "-g", "daemon off;"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready", proc, timeout=30)
        wait_ready(f"{base}/", proc, timeout=30)
        yield base
    finally:
        stop(proc)
        log.close()


# --- browser (shared by the e2e suites) -----------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, never a downloaded one; the flags keep it off the network and quiet as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), "Chromium missing: run `make system-deps` (Debian package chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
