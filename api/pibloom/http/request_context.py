"""The id of the request being served, for log records: its own module, so that logging (which the
gunicorn master configures too) does not import the web framework the middleware needs."""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("pibloom_request_id", default=None)


def current_request_id() -> str | None:
    return REQUEST_ID.get()
