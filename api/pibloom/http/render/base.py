"""What every endpoint's renderer offers the shared response skeleton (`http.respond`)."""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

from ...serving.execute import Event, Result
from ..protocol.common import Usage


class Renderer(Protocol):
    # With logprobs, a step whose text is still empty (part of a character) is sent for its logprob.
    with_logprobs: bool

    def whole(self, result: Result) -> BaseModel:
        """The non-streaming answer."""
        ...

    def chunk(self, event: Event | None, usage: Usage | None) -> str | None:
        """One streamed chunk's JSON: an event's delta (and usage on the last one), or usage alone;
        None when there is nothing to send yet (a reply held back until its choice ends)."""
        ...
