"""One request through nginx, Express and the api, found in all three logs by its request id."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from conftest import LOGS

# The fields every service writes on its access line (README: Logs).
COMMON = {"time", "service", "event", "request_id", "method", "path", "status", "duration_ms", "client"}


def access_entries(path: Path, request_id: str) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if request_id in line and line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == "access" and entry.get("request_id") == request_id:
                entries.append(entry)
    return entries


def test_one_request_id_through_all_three_logs(proxy_server: str) -> None:
    model = httpx.get(f"{proxy_server}/v1/models", timeout=10).json()["data"][0]["id"]
    request_id = f"trace-{uuid.uuid4().hex}"
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    reply = httpx.post(
        f"{proxy_server}/api/v1/chat/completions", json=body, headers={"X-Request-ID": request_id}, timeout=120
    )
    assert reply.status_code == 200 and reply.headers["x-request-id"] == request_id

    # Each service writes its line once the response is complete; the files may lag the reply a little.
    found: dict[str, list[dict[str, Any]]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = {service: access_entries(LOGS[service], request_id) for service in ("proxy", "web", "api")}
        if all(found.values()):
            break
        time.sleep(0.1)
    lines = {}
    for service, entries in found.items():
        assert len(entries) == 1, (service, entries)
        lines[service] = entries[0]
        assert entries[0].keys() >= COMMON, (service, entries[0])
        assert entries[0]["service"] == service
        assert entries[0]["method"] == "POST" and entries[0]["status"] == 200
        assert isinstance(entries[0]["duration_ms"], int | float)
    assert lines["proxy"]["path"] == lines["web"]["path"] == "/api/v1/chat/completions"
    assert lines["api"]["path"] == "/v1/chat/completions"  # Express forwards /api/* without the prefix
    # Each hop's time contains the next one's. nginx reads a clock it caches per event-loop turn and
    # counts whole milliseconds, so its figure may fall a few milliseconds short.
    assert lines["proxy"]["duration_ms"] + 10 >= lines["web"]["duration_ms"]
    assert lines["web"]["duration_ms"] + 0.2 >= lines["api"]["duration_ms"]
