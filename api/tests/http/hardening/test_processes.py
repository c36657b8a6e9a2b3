"""`pibloom serve` (gunicorn) under faults: a worker killed with SIGKILL mid-generation is replaced and
the service answers again; logs are JSON lines that carry request ids and no prompts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import psutil

from support import http_ready, pibloom_serve, wait_for

MODEL = "tiny-bloom"
SECRET = "do-not-log-this-prompt-91c2"


def workers(master: subprocess.Popen[bytes]) -> list[int]:
    return [child.pid for child in psutil.Process(master.pid).children()]


def test_killed_worker_is_replaced_and_service_recovers(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pibloom_serve(tiny_model_dir, tmp_path, PIBLOOM_GRACEFUL_TIMEOUT="5", PIBLOOM_LOG_JSON="true") as (
        proc,
        url,
        log_path,
    ):
        (first,) = workers(proc)

        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": SECRET}],
            "max_tokens": 900,
            "temperature": 0,
            "stream": True,
        }
        events: list[str] = []
        failures: list[Exception] = []
        started = threading.Event()

        def consume() -> None:
            try:
                with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
                    for line in response.iter_lines():
                        if line.startswith("data: "):
                            events.append(line[6:])
                            started.set()
            except httpx.HTTPError as exc:
                failures.append(exc)

        reader = threading.Thread(target=consume)
        reader.start()
        assert started.wait(60)
        os.kill(first, signal.SIGKILL)
        # The client learns at once that the stream broke: no hang, and no [DONE] claiming it finished.
        reader.join(30)
        assert not reader.is_alive()
        assert "[DONE]" not in events
        assert failures, "a stream cut by a dead worker must end in an error"

        # gunicorn boots a replacement, which loads the model and becomes ready.
        wait_for(lambda: bool(workers(proc)) and workers(proc) != [first], timeout=60, what="a new worker")
        wait_for(lambda: http_ready(url), timeout=120, what="the new worker to be ready")
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            json={**body, "stream": False, "max_tokens": 5},
            headers={"X-Request-ID": "after-the-crash"},
            timeout=60,
        )
        assert answer.status_code == 200
        assert answer.json()["usage"]["completion_tokens"] == 5
        assert answer.headers["x-request-id"] == "after-the-crash"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0

    text = log_path.read_text(encoding="utf-8", errors="replace")
    assert SECRET not in text
    entries = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "pibloom.access" and e.get("request_id") == "after-the-crash"]
    assert len(access) == 1
    assert access[0]["path"] == "/v1/chat/completions" and access[0]["status"] == 200
    assert access[0]["service"] == "api" and access[0]["event"] == "access"
    # uvicorn's own access lines (with query strings, in another format) are replaced by ours.
    assert '"POST /v1/chat/completions HTTP/1.1"' not in text
