"""Logging setup: plain text or one JSON object per line, each record with its request id.

Privacy: nothing here logs bodies. The access log (middleware/requestid.py) has no query strings and
no headers; prompts and completions are logged only by the opt-in middleware/promptlog.py.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .request_context import current_request_id

if TYPE_CHECKING:  # the gunicorn master configures its logging without the settings' imports
    from ..settings import Settings


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being handled (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line. Access lines carry the fields nginx and the web server log too
    (time, service, event, request_id, method, path, status, duration_ms, client: see the README)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "service": "api",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        http = getattr(record, "http", None)
        if isinstance(http, dict):
            entry["event"] = "access"
            entry.update(http)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [request_id={request_id}]" if request_id else text


def configure_logging(settings: Settings) -> None:
    configure_log_output(json_lines=settings.log_json, level=settings.log_level)


def configure_log_output(*, json_lines: bool, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # transformers' progress bars and warnings are noise in a server log.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    # uvicorn's access log would repeat each request with its query string and in its own format;
    # ours (pibloom.access) replaces it. uvicorn's errors go through our handler, with request ids.
    logging.getLogger("uvicorn.access").disabled = True
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.handlers[:] = []
    uvicorn_error.propagate = True
