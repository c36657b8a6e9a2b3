"""Fields a request body carries that the server does not know, and fields it knows but cannot honour.

Unknown fields are ignored by default (each name logged once at INFO): clients, SDKs and gateways add
their own. `PIBLOOM_STRICT_FIELDS=true` refuses them instead, 400 naming the first. A field OpenAI
defines that this server cannot honour (`protocol.common.REJECTED`) is a 400 naming it either way.
"""

from __future__ import annotations

import logging
import threading

from pydantic import BaseModel

from ..serving.errors import ServingError, bad_request
from .protocol.common import HARMLESS, REJECTED

log = logging.getLogger("pibloom.fields")

_seen: set[str] = set()
_seen_lock = threading.Lock()


def unknown_fields(body: BaseModel, prefix: str = "") -> list[str]:
    """Dotted paths of every field the body (and the models inside it) did not declare."""
    found = [f"{prefix}{name}" for name in body.model_extra or {}]
    for name in type(body).model_fields:
        value = getattr(body, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                where = f"{prefix}{name}.{i}." if isinstance(value, list) else f"{prefix}{name}."
                found.extend(unknown_fields(item, where))
    return found


def screen(body: BaseModel, *, strict: bool) -> None:
    """Refuse what cannot be honoured; refuse (strict) or log and ignore what is unknown."""
    for name, value in (body.model_extra or {}).items():
        if name in REJECTED and value is not None and value not in HARMLESS.get(name, ()):
            raise bad_request(
                f"'{name}' is not supported by this server: {REJECTED[name]}", param=name, code="unsupported_field"
            )
    unknown = [path for path in unknown_fields(body) if path not in REJECTED]
    if not unknown:
        return
    if strict:
        raise _unsupported(unknown[0])
    for path in unknown:
        # One line per field name, not per request: `messages.3.x` and `messages.0.x` are one name.
        name = ".".join(part for part in path.split(".") if not part.isdigit())
        with _seen_lock:
            if name in _seen:
                continue
            _seen.add(name)
        log.info("ignoring unknown request field '%s' (PIBLOOM_STRICT_FIELDS=true refuses such fields)", name)


def _unsupported(field: str) -> ServingError:
    return bad_request(
        f"Unsupported field: '{field}' is not supported by this server", param=field, code="unsupported_field"
    )
