"""Helpers for the batch client tests: real OpenAI-compatible servers (openai_server.py) as subprocesses."""

from __future__ import annotations

import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SERVER_SCRIPT = Path(__file__).with_name("openai_server.py")
API_DIR = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


@dataclass
class LiveServer:
    proc: subprocess.Popen[bytes]
    url: str

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_stats", timeout=5.0).json()

    async def astats(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{self.url}/_stats", timeout=5.0)).json()

    def prompts(self) -> list[str]:
        """The prompt (or last message) of every completion request it received, in order."""
        found = []
        for entry in self.stats()["log"]:
            body = entry["body"]
            found.append(body["messages"][-1]["content"] if "messages" in body else body["prompt"])
        return found

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def read_port(proc: subprocess.Popen[bytes], deadline: float) -> int:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))
        if ready:
            line = proc.stdout.readline().decode()
            if line.startswith("PORT "):
                return int(line.split()[1])
            if not line:
                break
    raise RuntimeError(f"test server did not start (exit code {proc.poll()})")


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll `condition` until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(interval)


StartServers = Callable[..., list[LiveServer]]
