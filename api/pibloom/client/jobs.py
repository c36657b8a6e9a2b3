"""What one item asks of a server, per mode: generation (completions or chat) or scoring.

A job says where an item goes, with what body, how to read the answer and how to turn it into a
result row; the retry loop in runner.py is the same for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema.protocols import Validator
from pydantic import BaseModel, ValidationError

from .models import BatchItem, Item, ResultRow, Row, ScoreItem, ScoreRow, Usage
from .options import BatchOptions
from .pool import Attempt, Reader, Server, text_reader
from .structured import refuses_response_format, response_format
from .validate import OutputError, parse_output

SCORE_PATH = "/v1/score"
NO_SCORE = f"no {SCORE_PATH} (not a piBLOOM server?)"


def _usage(data: Mapping[str, Any] | None) -> Usage | None:
    raw = data.get("usage") if data else None
    if not isinstance(raw, dict):
        return None
    try:
        return Usage.model_validate(raw)
    except ValueError:
        return None


def _model(options: BatchOptions, server: Server) -> dict[str, Any]:
    model = options.model or server.model
    return {"model": model} if model else {}


class Job:
    """Generation: `prompt` to /v1/completions, `messages` to /v1/chat/completions."""

    # Set where a 404 on the job's endpoint means the server lacks it (not that the input is wrong).
    missing_endpoint: str | None = None

    def __init__(self, options: BatchOptions, validator: Validator | None = None) -> None:
        self.options = options
        self.validator = validator
        self.max_variants = options.max_schema_retries if options.wants_json else 0
        self.format = response_format(options)

    def path(self, item: Item) -> str:
        assert isinstance(item, BatchItem)
        return "/v1/chat/completions" if item.is_chat else "/v1/completions"

    def reader(self, item: Item) -> Reader:
        assert isinstance(item, BatchItem)
        return text_reader(item.is_chat)

    def body(self, item: Item, server: Server, variant: int) -> dict[str, Any]:
        assert isinstance(item, BatchItem)
        body = _model(self.options, server)
        if item.is_chat:
            body["messages"] = item.messages
        else:
            body["prompt"] = item.prompt
        body.update(self.options.defaults)
        body.update(item.params)
        if self.format is not None and server.structured and "response_format" not in body:
            body["response_format"] = self.format
        if self.options.wants_json:
            # Seeds are explicit in JSON mode so that each retry (variant) samples a different answer.
            seed = item.params.get("seed", self.options.defaults.get("seed", 0))
            body["seed"] = (seed if isinstance(seed, int) else 0) + variant
        return body

    def row(self, item: Item, attempts: int, attempt: Attempt | None, server: Server | None) -> Row:
        return ResultRow(
            id=item.id,
            server=server.url if server else None,
            attempts=attempts,
            latency_s=round(attempt.latency, 4) if attempt else None,
            usage=_usage(attempt.data) if attempt else None,
            output=attempt.value if attempt else None,
            meta=item.meta,
            response=attempt.data if attempt else None,
        )

    def format_refused(self, attempt: Attempt, server: Server) -> bool:
        """The server cannot enforce `response_format`: ask it without from now on (True: send again)."""
        if self.format is None or not server.structured or not refuses_response_format(attempt):
            return False
        server.structured = False
        return True

    def check(self, row: Row) -> str | None:
        """Why a successful answer is still no good (worth another variant), or None."""
        if not self.options.wants_json:
            return None
        assert isinstance(row, ResultRow)
        try:
            row.parsed = parse_output(row.output or "", self.validator)
        except OutputError as exc:
            return str(exc)
        return None


class _ScoreAnswer(BaseModel):
    tokens: int
    logprob: float
    mean_logprob: float
    perplexity: float


def read_score(data: Any) -> _ScoreAnswer:
    try:
        return _ScoreAnswer.model_validate(data["data"][0])
    except (KeyError, IndexError, TypeError, ValidationError) as exc:
        raise ValueError(f"answer is not a {SCORE_PATH} answer") from exc


class ScoreJob(Job):
    """Scoring: one text per request to /v1/score; the server batches concurrent requests itself."""

    missing_endpoint = NO_SCORE

    def path(self, item: Item) -> str:
        return SCORE_PATH

    def reader(self, item: Item) -> Reader:
        return read_score

    def body(self, item: Item, server: Server, variant: int) -> dict[str, Any]:
        assert isinstance(item, ScoreItem)
        body = _model(self.options, server)
        body["text"] = item.text
        context = item.context if item.context is not None else self.options.context
        if context:
            body["context"] = context
        return body

    def row(self, item: Item, attempts: int, attempt: Attempt | None, server: Server | None) -> Row:
        answer = attempt.value if attempt and attempt.kind == "ok" else None
        return ScoreRow(
            id=item.id,
            server=server.url if server else None,
            attempts=attempts,
            latency_s=round(attempt.latency, 4) if attempt else None,
            meta=item.meta,
            **(answer.model_dump() if answer is not None else {}),
        )
