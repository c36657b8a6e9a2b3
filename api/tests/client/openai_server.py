"""A small, real OpenAI-compatible HTTP server for the batch client tests, run as a subprocess.

It answers deterministically from the prompt (`echo: <prompt>`), and misbehaves on request:

- server flags: `--fail-first N --fail-status 503 --retry-after 1` (first N completions fail),
  `--delay S` (each answer takes S seconds, so work is in flight), `--no-health` (a generic server
  without /health/ready), `--api-key K` (Bearer required), `--model NAME`;
- prompt directives: `STATUS=400` answers that status; `JSON-AFTER=N` answers not-JSON for seed 0,
  JSON that breaks the test schema for seeds 1..N-1, and valid JSON (in a fence, with prose) from
  seed N on.

`GET /_stats` reports the completion requests seen (with bodies and arrival times) and how many are
in flight. The server binds port 0 and prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return str(body["messages"][-1].get("content", ""))
    return str(body.get("prompt", ""))


def _answer(text: str, seed: int) -> str:
    match = re.search(r"JSON-AFTER=(\d+)", text)
    if not match:
        return f"echo: {text}"
    if seed == 0:
        return 'Sure! {"title": "unfinished'
    if seed < int(match.group(1)):
        return json.dumps({"wrong": seed})
    record = json.dumps({"title": text, "seed": seed})
    return f"Here is the record:\n```json\n{record}\n```\nHope this helps."


def build_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    state: dict[str, Any] = {"requests": 0, "in_flight": 0, "log": []}

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        body = {"error": {"message": message, "type": "test", "code": status, "param": None}}
        return JSONResponse(body, status_code=status, headers=headers)

    async def complete(request: Request, chat: bool) -> JSONResponse:
        if args.api_key and request.headers.get("authorization") != f"Bearer {args.api_key}":
            return error(401, "bad api key")
        body = await request.json()
        state["requests"] += 1
        number = state["requests"]
        state["log"].append({"path": request.url.path, "body": body, "t": time.monotonic()})
        if number <= args.fail_first:
            headers = {"Retry-After": args.retry_after} if args.retry_after is not None else None
            return error(args.fail_status, "try again later", headers)
        text = _prompt_text(body)
        status = re.search(r"STATUS=(\d{3})", text)
        if status:
            return error(int(status.group(1)), f"refused: {text}")
        state["in_flight"] += 1
        try:
            await asyncio.sleep(args.delay)  # simulated generation time
        finally:
            state["in_flight"] -= 1
        output = _answer(text, int(body.get("seed") or 0))
        usage = {
            "prompt_tokens": len(text.split()),
            "completion_tokens": len(output.split()),
            "total_tokens": len(text.split()) + len(output.split()),
        }
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": output}
        else:
            choice["text"] = output
        kind = "chat.completion" if chat else "text_completion"
        answer = {
            "id": f"x-{number}",
            "object": kind,
            "model": args.model,
            "choices": [choice],
            "usage": usage,
        }
        return JSONResponse(answer)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        return await complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> JSONResponse:
        return await complete(request, chat=False)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": args.model, "object": "model", "created": 0, "owned_by": "t"}],
        }

    if not args.no_health:

        @app.get("/health/ready")
        async def ready() -> JSONResponse:
            return JSONResponse({"status": "ready"})

    @app.get("/_stats")
    async def stats() -> dict[str, Any]:
        return state

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="test-model")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=503)
    parser.add_argument("--retry-after", default=None)
    parser.add_argument("--no-health", action="store_true")
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    # Listening already: connections queue in the backlog until uvicorn accepts them.
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(build_app(args), log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
