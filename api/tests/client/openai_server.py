"""A small, real OpenAI-compatible HTTP server for the batch client tests, run as a subprocess.

It answers deterministically from the prompt (`echo: <prompt>`), and misbehaves on request:

- server flags: `--fail-first N --fail-status 503 --retry-after 1` (first N requests fail),
  `--delay S` (each answer takes S seconds, so work is in flight), `--no-health` (a generic server
  without /health/ready), `--no-score` (no /v1/score either, as any non-piBLOOM server),
  `--api-key K` (Bearer required), `--model NAME`, `--no-response-format` (a 400 naming
  `response_format` when a request carries it, as a server without structured output answers);
- prompt directives: `STATUS=400` answers that status; `JSON-AFTER=N` answers not-JSON for seed 0,
  JSON that breaks the test schema for seeds 1..N-1, and valid JSON (in a fence, with prose) from
  seed N on.

`POST /v1/score` is piBLOOM's shape with a made-up, deterministic score: each word of the text is a
token with log-probability -len(word) / (1 + words in the context); a `model` other than the served
one is a 404 model_not_found, as piBLOOM answers.

`GET /_stats` reports the completion and score requests seen (with bodies and arrival times) and how many are
in flight. The server binds port 0 and prints `PORT <n>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
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

    def error(
        status: int, message: str, headers: dict[str, str] | None = None, code: str | None = None
    ) -> JSONResponse:
        body = {"error": {"message": message, "type": "test", "code": code or status, "param": None}}
        return JSONResponse(body, status_code=status, headers=headers)

    async def admit(request: Request, text: str, number: int) -> JSONResponse | None:
        """The failures every endpoint shares, then the simulated work; None when it should answer."""
        if args.api_key and request.headers.get("authorization") != f"Bearer {args.api_key}":
            return error(401, "bad api key")
        if number <= args.fail_first:
            headers = {"Retry-After": args.retry_after} if args.retry_after is not None else None
            return error(args.fail_status, "try again later", headers)
        status = re.search(r"STATUS=(\d{3})", text)
        if status:
            return error(int(status.group(1)), f"refused: {text}")
        state["in_flight"] += 1
        try:
            await asyncio.sleep(args.delay)  # simulated generation time
        finally:
            state["in_flight"] -= 1
        return None

    async def logged(request: Request) -> dict[str, Any]:
        body = await request.json()
        state["requests"] += 1
        state["log"].append({"path": request.url.path, "body": body, "t": time.monotonic()})
        return body

    async def complete(request: Request, chat: bool) -> JSONResponse:
        body = await logged(request)
        number = state["requests"]
        text = _prompt_text(body)
        if args.no_response_format and "response_format" in body:
            return error(400, "Unsupported field: 'response_format' is not supported", code="unsupported_field")
        refused = await admit(request, text, number)
        if refused is not None:
            return refused
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

    if not args.no_score:

        @app.post("/v1/score")
        async def score(request: Request) -> JSONResponse:
            body = await logged(request)
            text, context = str(body["text"]), str(body.get("context") or "")
            if body.get("model", args.model) != args.model:
                return error(404, f"The model '{body['model']}' does not exist", code="model_not_found")
            refused = await admit(request, text, state["requests"])
            if refused is not None:
                return refused
            logprobs = [-len(word) / (1 + len(context.split())) for word in text.split()]
            mean = sum(logprobs) / len(logprobs)
            entry = {
                "index": 0,
                "tokens": len(logprobs),
                "logprob": sum(logprobs),
                "mean_logprob": mean,
                "perplexity": math.exp(-mean),
            }
            usage = {"prompt_tokens": len(logprobs), "completion_tokens": 0, "total_tokens": len(logprobs)}
            return JSONResponse({"object": "list", "model": args.model, "data": [entry], "usage": usage})

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
    parser.add_argument("--no-score", action="store_true")
    parser.add_argument("--no-response-format", action="store_true")
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
