"""A scripted stand-in for the api, for browser tests of the chat page that need replies the model
would not write on demand: long, hostile, paced or failing. It speaks the same HTTP as the api
(`/v1/models`, `/tokenize`, streaming `/v1/chat/completions`) and is driven from the test: each chat
request takes the next queued reply, or echoes the last user message when none is queued.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "fake-model"


@dataclass
class Reply:
    """One scripted answer: an SSE stream of `pieces` sent `delay` seconds apart, or an error status."""

    pieces: list[str] = field(default_factory=list)
    delay: float = 0.0
    status: int = 200
    error: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Sent:
    """What the server saw of one streamed reply."""

    body: dict[str, Any]
    started: float = 0.0
    finished: float = 0.0


class FakeApi:
    def __init__(self, context_length: int = 8192) -> None:
        self.context_length = context_length
        self.capabilities: list[str] = []
        self.replies: deque[Reply] = deque()
        self.sent: list[Sent] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeApi:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def count(messages: list[dict[str, Any]]) -> int:
        """Tokens as this server counts them: 4 per message plus one per word."""
        return sum(4 + len(str(m.get("content", "")).split()) for m in messages)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    card = {"id": MODEL, "object": "model", "created": 0, "max_model_len": api.context_length}
                    if api.capabilities:
                        card["capabilities"] = api.capabilities
                    self._json(200, {"object": "list", "data": [card]})
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
                if self.path == "/tokenize":
                    count = api.count(body["messages"])
                    self._json(200, {"tokens": [], "count": count, "max_model_len": api.context_length})
                elif self.path == "/v1/chat/completions":
                    self._chat(body)
                else:
                    self._json(404, {"detail": "Not Found"})

            def _chat(self, body: dict[str, Any]) -> None:
                reply = (
                    api.replies.popleft()
                    if api.replies
                    else Reply(pieces=[f"You said: {body['messages'][-1]['content']}"])
                )
                if reply.status != 200:
                    error = {"message": reply.error, "type": "error", "code": None}
                    self._json(reply.status, {"error": error}, reply.headers)
                    return
                sent = Sent(body=body)
                api.sent.append(sent)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                sent.started = time.monotonic()
                for piece in reply.pieces:
                    chunk = {
                        "object": "chat.completion.chunk",
                        "model": MODEL,
                        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    if reply.delay:
                        time.sleep(reply.delay)  # pacing the stream like a model does, not waiting on the page
                words = sum(len(p.split()) for p in reply.pieces)
                prompt = api.count(body["messages"])
                usage = {"prompt_tokens": prompt, "completion_tokens": words, "total_tokens": prompt + words}
                last = {
                    "object": "chat.completion.chunk",
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": usage,
                }
                self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()
                sent.finished = time.monotonic()
                self.close_connection = True

        return Handler
