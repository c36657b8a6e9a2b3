"""The whole stack through nginx: browser, REST clients, event streams, and the `make run` script."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import redis
from openai import OpenAI
from playwright.sync_api import Browser, expect

from conftest import BIN, ROOT, free_port

PROMPT = [{"role": "user", "content": "Write four sentences about the sea."}]


@pytest.fixture(scope="module")
def model_id(proxy_server: str) -> str:
    return str(httpx.get(f"{proxy_server}/v1/models", timeout=10).json()["data"][0]["id"])


# --- the browser -------------------------------------------------------------------------------


def test_page_loads_from_the_proxy_and_a_message_streams_a_reply(browser: Browser, proxy_server: str) -> None:
    page = browser.new_page()
    # Two cores shared with the model: allow for slow steps rather than Playwright's 30 s defaults.
    page.set_default_timeout(120_000)
    try:
        is_completion = lambda r: r.url.split("?")[0].endswith("/api/v1/chat/completions")  # noqa: E731
        with page.expect_response(is_completion, timeout=120_000) as streamed:
            page.goto(proxy_server + "/")
            expect(page).to_have_title(re.compile("piBLOOM"), timeout=30_000)
            page.get_by_role("textbox", name="Message").fill("Write four sentences about the sea.")
            page.get_by_role("button", name="Send message").click()
            # Part of the reply is on screen while it is still being generated: it streamed.
            page.wait_for_function(
                """() => {
                    const reply = document.querySelector('article[aria-label="piBLOOM"][data-status="streaming"]');
                    return reply !== null && reply.textContent.trim().length > 0;
                }""",
                timeout=120_000,
            )
        response = streamed.value
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        done = page.locator('article[aria-label="piBLOOM"][data-status="done"]')
        expect(done).to_have_count(1, timeout=120_000)
        assert done.inner_text().strip()
    finally:
        page.close()


# --- REST clients through the same port ---------------------------------------------------------


def test_chat_completion_through_the_proxy(proxy_server: str, model_id: str) -> None:
    client = OpenAI(base_url=f"{proxy_server}/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model=model_id,
        messages=PROMPT,
        max_tokens=16,
        temperature=0,  # type: ignore[arg-type]
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens > 0


def test_streamed_chat_completion_through_the_proxy(proxy_server: str, model_id: str) -> None:
    client = OpenAI(base_url=f"{proxy_server}/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(
        model=model_id,
        messages=PROMPT,  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) > 2 and text.strip()
    assert chunks[-1].choices[-1].finish_reason in ("stop", "length")


def test_api_routes_skip_express(proxy_server: str, api_server: str) -> None:
    # The proxy sends these straight to the api: the same answers as the api gives itself.
    for path in ("/v1/models", "/openapi.json", "/health/ready", "/v2/health/ready"):
        through_proxy = httpx.get(f"{proxy_server}{path}", timeout=10)
        direct = httpx.get(f"{api_server}{path}", timeout=10)
        assert through_proxy.status_code == direct.status_code == 200, path
        if path != "/v1/models":
            assert through_proxy.json() == direct.json(), path
    assert httpx.get(f"{proxy_server}/docs", timeout=10).text == httpx.get(f"{api_server}/docs", timeout=10).text


def test_static_assets_are_compressed_and_headers_not_doubled(proxy_server: str) -> None:
    page = httpx.get(f"{proxy_server}/", timeout=10)
    assert page.status_code == 200
    assert len(page.headers.get_list("content-security-policy")) == 1
    assert len(page.headers.get_list("x-content-type-options")) == 1
    script = re.search(r'src="(/assets/[^"]+\.js)"', page.text)
    assert script, page.text[:500]
    asset = httpx.get(f"{proxy_server}{script.group(1)}", headers={"accept-encoding": "gzip"}, timeout=10)
    assert asset.status_code == 200
    assert asset.headers["content-encoding"] == "gzip"


# --- event streams arrive in pieces --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/v1/chat/completions"], ids=["api", "via-express"])
def test_event_stream_arrives_in_pieces_through_nginx(proxy_server: str, model_id: str, path: str) -> None:
    body = {"model": model_id, "messages": PROMPT, "max_tokens": 32, "temperature": 0, "stream": True}
    arrivals: list[tuple[float, str]] = []
    headers = {"accept-encoding": "gzip"}
    with httpx.stream("POST", f"{proxy_server}{path}", json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        # Never compressed, never buffered by a proxy in front of this one.
        assert "content-encoding" not in response.headers
        assert response.headers["x-accel-buffering"] == "no"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line.removeprefix("data: ")))
    assert arrivals[-1][1] == "[DONE]"
    events = [json.loads(data) for _, data in arrivals[:-1]]
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events).strip()
    end = arrivals[-1][0]
    # Generating 32 tokens takes well over a second here; a buffered stream would deliver every event
    # within milliseconds of the end. Several must have arrived, at distinct times, long before it.
    early = [t for t, _ in arrivals if end - t > 0.2]
    assert len(early) >= 5, [round(end - t, 3) for t, _ in arrivals]
    assert len({round(t, 2) for t in early}) >= 3


# --- `make run`: the local processes under honcho ---------------------------------------------


def _start_run_local(tmp_path: Path, extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path, dict]:
    ports = {"PIBLOOM_PORT": free_port(), "PIBLOOM_WEB_PORT": free_port(), "PIBLOOM_PROXY_PORT": free_port()}
    ports["PIBLOOM_REDIS_PORT"] = free_port()
    env = dict(os.environ, PIBLOOM_RUN_DIR=str(tmp_path), VENV_BIN=str(BIN), **extra_env)
    env.update({k: str(v) for k, v in ports.items()})
    log = tmp_path / "run-local.log"
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "run-local.sh")],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    return proc, log, ports


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        assert proc.poll() is None, text
        time.sleep(0.3)
    raise TimeoutError(f"no {pattern!r} in:\n{log.read_text(errors='replace')}")


def _ctrl_c(proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """What Ctrl-C in a terminal does: SIGINT to the whole foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_run_script_serves_the_stack_and_one_ctrl_c_stops_it(tmp_path: Path, model_id: str) -> None:
    # A rate limit, so the api keeps its counts in the stack's redis-server.
    proc, log, ports = _start_run_local(tmp_path, {"PIBLOOM_RATE_LIMIT": "100/minute"})
    try:
        url = f"http://127.0.0.1:{ports['PIBLOOM_PROXY_PORT']}/"
        text = _wait_for_line(proc, log, re.escape(f"piBLOOM is ready: open {url}"), timeout=300)
        assert text.startswith(f"piBLOOM: open {url}")
        # Logs are prefixed per process.
        for name in ("api.1", "web.1", "proxy.1", "redis.1"):
            assert re.search(rf"^\S+ {re.escape(name)}\s+\| ", text, flags=re.MULTILINE), name
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "<title>piBLOOM</title>" in page.text
        reply = httpx.post(
            f"{url}v1/chat/completions",
            json={"model": model_id, "messages": PROMPT, "max_tokens": 4},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        # The api counted that request in the stack's redis-server, where every api process looks.
        store = redis.Redis(port=ports["PIBLOOM_REDIS_PORT"])
        assert store.keys("*pibloom*"), "no rate-limit count in redis"
        store.close()
    finally:
        _ctrl_c(proc)
    assert not any(_listening(port) for port in ports.values())


def test_run_script_without_nginx_serves_through_express(tmp_path: Path) -> None:
    proc, log, ports = _start_run_local(tmp_path, {"PIBLOOM_NGINX": "none"})
    try:
        web_url = f"http://127.0.0.1:{ports['PIBLOOM_WEB_PORT']}/"
        text = _wait_for_line(proc, log, r"web\.1\s+\| piBLOOM web listening", timeout=60)
        assert "nginx not found" in text and "apt-get install nginx" in text
        assert f"piBLOOM: open {web_url}" in text
        assert "proxy:" not in (tmp_path / "Procfile").read_text()
        assert httpx.get(web_url, timeout=10).status_code == 200
    finally:
        _ctrl_c(proc)
    assert not any(_listening(port) for port in ports.values())
