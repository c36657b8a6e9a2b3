"""Fixtures of the hardening tests (the shared ones come from tests/conftest.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from pibloom.http.logs import RequestIdFilter


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Every log record, as a configured handler sees it (through the request id filter)."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield seen
    root.removeHandler(handler)
    root.setLevel(old_level)
