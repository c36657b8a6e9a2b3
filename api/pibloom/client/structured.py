"""Structured output from servers that can enforce it: a JSON job's schema goes out as OpenAI's
`response_format`, and a server that refuses the field (400 naming it) is asked without it from
then on, the client falling back to validating answers and retrying with the next seed."""

from __future__ import annotations

from typing import Any

from .options import BatchOptions
from .pool import Attempt

FIELD = "response_format"


def response_format(options: BatchOptions) -> dict[str, Any] | None:
    """What to ask for: the schema itself (json_schema), any JSON (json_object), or nothing."""
    if isinstance(options.json_schema, dict):
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": options.json_schema, "strict": True}}
    if options.wants_json:
        return {"type": "json_object"}
    return None


def refuses_response_format(attempt: Attempt) -> bool:
    """A 400 (or 422) whose error names `response_format`: the server cannot enforce it."""
    if attempt.kind != "http" or attempt.status not in (400, 422):
        return False
    return FIELD in (attempt.message or "") or FIELD in (attempt.code or "")
