"""OpenAI's Batch file format, as `vllm run-batch` reads and writes it.

Input, one a line: `{"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions",
"body": {...}}`. Output, one a line: `{"id", "custom_id", "response": {"status_code", "request_id",
"body"}, "error"}`, with the server's whole answer as `body`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from .models import BatchItem, ResultRow

URLS = ("/v1/chat/completions", "/v1/completions")


def is_batch_request(data: Any) -> bool:
    return isinstance(data, dict) and "custom_id" in data and "body" in data


def to_item(data: dict[str, Any]) -> BatchItem:
    """A request line as a batch item (id: custom_id); ValueError says what is wrong with it."""
    method = str(data.get("method", "POST")).upper()
    url = data.get("url")
    if method != "POST" or url not in URLS:
        raise ValueError(f"a batch request must be POST to one of {', '.join(URLS)}; got {method} {url}")
    body = data["body"]
    if not isinstance(body, dict):
        raise ValueError("'body' must be a JSON object")
    kind = "messages" if url == "/v1/chat/completions" else "prompt"
    if kind not in body:
        raise ValueError(f"a request to {url} needs '{kind}' in its body")
    fields = {k: v for k, v in body.items() if k not in ("messages", "prompt", "model")}
    if "model" in body:
        fields["model"] = body["model"]
    return BatchItem.model_validate({"id": data["custom_id"], kind: body[kind], **fields})


def result_line(row: ResultRow) -> str:
    """The output line of one finished item."""
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    if row.error is None:
        response = {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex}", "body": row.response}
    else:
        if row.error.status is not None:
            body = row.response if row.response is not None else {"error": {"message": row.error.message}}
            response = {"status_code": row.error.status, "request_id": f"req_{uuid.uuid4().hex}", "body": body}
        error = {"code": row.error.type, "message": row.error.message}
    line = {"id": f"batch_req_{uuid.uuid4().hex}", "custom_id": row.id, "response": response, "error": error}
    return json.dumps(line) + "\n"
