"""A small streaming OpenAI-style chat server for the chat-case and soak tests, run as a subprocess:
`python stream_server.py PORT [--token-delay S] [--fail-long] [--fail-words N]`.

Every chat request streams `max_tokens` tokens ("w0 w1 ..."), one every `--token-delay` seconds,
then a usage chunk and `[DONE]`. A request of nine or more messages is "long"; `--fail-long` answers
those with HTTP 500, as `--fail-words N` does a request whose last message has more than N words.
`GET /_log` lists every request with its messages, max_tokens, and server-side times of start, first
token and end, and whether the client went away before the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

LONG_MESSAGES = 9


def build_app(args: argparse.Namespace) -> FastAPI:
    app = FastAPI()
    log: list[dict[str, Any]] = []

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

    @app.get("/_log")
    async def get_log() -> list[dict[str, Any]]:
        return log

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        body = await request.json()
        entry: dict[str, Any] = {
            "messages": body["messages"],
            "max_tokens": body["max_tokens"],
            "start": time.monotonic(),
            "first": None,
            "end": None,
            "cancelled": False,
        }
        log.append(entry)
        too_many_words = args.fail_words is not None and len(body["messages"][-1]["content"].split()) > args.fail_words
        if too_many_words or (args.fail_long and len(body["messages"]) >= LONG_MESSAGES):
            entry["end"] = time.monotonic()
            return JSONResponse({"error": {"message": "too long", "type": "test"}}, status_code=500)

        async def events() -> AsyncIterator[str]:
            sent = 0
            try:
                for index in range(int(body["max_tokens"])):
                    await asyncio.sleep(args.token_delay)
                    if entry["first"] is None:
                        entry["first"] = time.monotonic()
                    chunk = {"choices": [{"index": 0, "delta": {"content": f"w{index} "}}]}
                    yield f"data: {json.dumps(chunk)}\n\n"
                    sent += 1
                usage = {"prompt_tokens": 1, "completion_tokens": sent, "total_tokens": sent + 1}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
                yield "data: [DONE]\n\n"
            except asyncio.CancelledError:
                entry["cancelled"] = True
                raise
            finally:
                entry["end"] = time.monotonic()

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.add_argument("--fail-long", action="store_true")
    parser.add_argument("--fail-words", type=int, default=None)
    args = parser.parse_args()
    uvicorn.run(build_app(args), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
