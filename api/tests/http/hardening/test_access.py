"""Access control and limits on a real tiny-model server: API keys, metrics keyed by setting, CORS,
body size limit, rate limit, and what reaches the logs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx

from pibloom.http.logs import JsonFormatter, TextFormatter

from support import ServerFactory, wait_for

MODEL = "tiny-bloom"
SECRET_PROMPT = "my-secret-prompt-7f3a"


def chat(max_tokens: int = 3, content: str = "Hello") -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def test_api_keys_guard_inference_but_not_health(server_factory: ServerFactory, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# one key per line\nfile-key\n\n", encoding="utf-8")
    with server_factory(api_keys=["listed-key"], api_keys_file=keys_file) as (url, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic listed-key"}):
            refused = httpx.post(f"{url}/v1/chat/completions", json=chat(), headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"]["code"] == "invalid_api_key"
        assert httpx.post(f"{url}/chat/", json={"content": "Hi"}).status_code == 401
        for key in ("listed-key", "file-key"):
            ok = httpx.post(f"{url}/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert httpx.get(f"{url}/health/ready").status_code == 200
        assert httpx.get(f"{url}/v2/health/live").status_code == 200
        # Metrics stay open unless a setting says otherwise.
        assert httpx.get(f"{url}/metrics").status_code == 200


def test_metrics_can_require_a_key(server_factory: ServerFactory) -> None:
    with server_factory(api_keys=["k"], metrics_require_key=True) as (url, _):
        refused = httpx.get(f"{url}/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer k"})
        assert scraped.status_code == 200
        assert "pibloom_num_requests_running" in scraped.text
        assert httpx.get(f"{url}/health/live").status_code == 200


def preflight(url: str, origin: str) -> httpx.Response:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    return httpx.options(f"{url}/v1/chat/completions", headers=headers)


def test_cors_is_off_by_default(base_url: str) -> None:
    assert "access-control-allow-origin" not in preflight(base_url, "https://evil.example").headers
    response = httpx.post(f"{base_url}/v1/chat/completions", json=chat(), headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_allow_list_and_limits_answer_readably(server_factory: ServerFactory) -> None:
    allowed = "https://chat.example"
    with server_factory(cors_origins=[allowed], rate_limit="2/minute") as (url, _):
        assert preflight(url, allowed).headers["access-control-allow-origin"] == allowed
        assert "access-control-allow-origin" not in preflight(url, "https://evil.example").headers
        statuses = []
        for _ in range(3):
            response = httpx.post(f"{url}/v1/chat/completions", json=chat(), headers={"Origin": allowed})
            statuses.append(response.status_code)
        assert statuses == [200, 200, 429]
        # A browser page can read the refusal and when to retry.
        assert response.headers["access-control-allow-origin"] == allowed
        assert "retry-after" in response.headers["access-control-expose-headers"].lower()


def test_rate_limit_in_the_api(server_factory: ServerFactory) -> None:
    with server_factory(rate_limit="3/minute") as (url, host):
        statuses = [httpx.post(f"{url}/v1/chat/completions", json=chat()).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        refused = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "Hi"})
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 20  # one request per 20 s
        assert refused.json()["error"]["type"] == "rate_limit_error"
        # Probes and metrics are not limited; the refusals are counted.
        assert all(httpx.get(f"{url}/health/ready").status_code == 200 for _ in range(5))
        registry = host.metrics.registry
        assert registry.get_sample_value("pibloom_requests_rejected_total", {"reason": "rate_limited"}) == 2


def test_body_size_limit(server_factory: ServerFactory) -> None:
    with server_factory(max_body_bytes=2048) as (url, _):
        big = httpx.post(f"{url}/v1/chat/completions", json=chat(content="word " * 1000))
        assert big.status_code == 413
        assert big.json()["error"]["code"] == "request_too_large"
        assert httpx.post(f"{url}/v1/chat/completions", json=chat(content="word " * 100)).status_code == 200


def test_prompts_never_reach_the_logs_by_default(base_url: str, records: list[logging.LogRecord]) -> None:
    response = httpx.post(
        f"{base_url}/v1/chat/completions?note={SECRET_PROMPT}",
        json=chat(content=SECRET_PROMPT, max_tokens=12),
        headers={"X-Request-ID": "privacy-check-1"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "privacy-check-1"
    completion = response.json()["choices"][0]["message"]["content"]
    assert len(completion) > 8  # long enough not to turn up in a log line by chance
    # Everything the server side logged (this process's own HTTP client logs its URLs: not the server).
    server_side = [r for r in records if not r.name.startswith(("httpx", "httpcore"))]
    lines = [f(r) for r in server_side for f in (TextFormatter().format, JsonFormatter().format)]
    assert not [line for line in lines if SECRET_PROMPT in line or completion in line]

    def access_records() -> list[logging.LogRecord]:
        return [r for r in records if r.name == "pibloom.access" and r.request_id == "privacy-check-1"]

    # The access line is written once the response is sent, which can be after the client has it.
    wait_for(lambda: bool(access_records()), 10.0, "the access log line")
    access = access_records()
    assert len(access) == 1
    assert access[0].http == {  # type: ignore[attr-defined]
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": access[0].http["duration_ms"],  # type: ignore[attr-defined]
        "client": "127.0.0.1",
    }


def test_prompt_logging_is_opt_in(server_factory: ServerFactory, records: list[logging.LogRecord]) -> None:
    with server_factory(log_prompts=True) as (url, _):
        response = httpx.post(f"{url}/v1/chat/completions", json=chat(content=SECRET_PROMPT, max_tokens=4))
        completion = response.json()["choices"][0]["message"]["content"]
    logged = [r for r in records if r.name == "pibloom.prompts"]
    assert len(logged) == 1
    message = logged[0].getMessage()
    assert SECRET_PROMPT in message
    # The response body is JSON: the completion appears as a JSON string would spell it.
    assert json.dumps(completion, ensure_ascii=False)[1:-1] in message
    assert logged[0].request_id == response.headers["x-request-id"]  # type: ignore[attr-defined]
