"""Fixtures for the batch client tests: real OpenAI-compatible servers as subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch_support import API_DIR, SERVER_SCRIPT, START_TIMEOUT, LiveServer, StartServers, read_port


@pytest.fixture
def start_servers(tmp_path: Path) -> Iterator[StartServers]:
    """start_servers([], ["--delay", "0.1"]) starts one server per argument list, in parallel."""
    started: list[LiveServer] = []

    def start(*arg_lists: list[str]) -> list[LiveServer]:
        procs = []
        for index, args in enumerate(arg_lists):
            log = (tmp_path / f"server-{len(started) + index}.log").open("wb")
            procs.append(
                subprocess.Popen([sys.executable, str(SERVER_SCRIPT), *args], stdout=subprocess.PIPE, stderr=log)
            )
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        servers = []
        for proc in procs:
            server = LiveServer(proc, f"http://127.0.0.1:{read_port(proc, deadline)}")
            started.append(server)
            servers.append(server)
        return servers

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)  # in case a test stopped it
        server.kill()
        if server.proc.stdout:
            server.proc.stdout.close()


@pytest.fixture
def client_env() -> dict[str, str]:
    """Environment for running `python -m pibloom.client` as a subprocess."""
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{API_DIR}{os.pathsep}{path}" if path else str(API_DIR))
