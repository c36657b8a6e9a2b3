"""The shapes the batch client reads and writes: one input item, one result row."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

ItemId = str | int

# Keys of an input item that are the client's own; every other key is a request parameter.
RESERVED_KEYS = frozenset({"id", "prompt", "messages", "meta"})


def id_key(item_id: ItemId) -> str:
    """Ids compare as text, so `1` in one file and `"1"` in another are the same item."""
    return str(item_id)


def _id_not_empty(value: ItemId) -> ItemId:
    if isinstance(value, str) and not value.strip():
        raise ValueError("id must not be empty")
    return value


# The id of an input item: a number or a non-blank string.
InputId = Annotated[ItemId, AfterValidator(_id_not_empty)]


class BatchItem(BaseModel):
    """One prompt: an id, either `prompt` (text completion) or `messages` (chat), and parameters.

    Any other key (temperature, max_tokens, seed, stop, top_p, ...) is passed to the server as is.
    `meta` is copied to the result row untouched and never sent.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    id: InputId
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    meta: Any = None

    @field_validator("messages")
    @classmethod
    def _messages_shape(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("messages must not be empty")
        for index, message in enumerate(value):
            if not isinstance(message.get("role"), str):
                raise ValueError(f"messages[{index}] needs a string 'role'")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> BatchItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("an item needs exactly one of 'prompt' or 'messages'")
        if "stream" in self.params:
            raise ValueError("'stream' is not supported: the batch client waits for whole answers")
        return self

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


class ScoreItem(BaseModel):
    """One text to score (`--score`): its log-likelihood, optionally conditioned on a `context`.

    `context` overrides the run's default context; `meta` is copied to the result row, never sent.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: InputId
    text: str
    context: str | None = None
    meta: Any = None

    @field_validator("text")
    @classmethod
    def _text_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("text must not be empty")
        return value


class ErrorInfo(BaseModel):
    """Why an item failed: `type` is one of http, timeout, connection, ejected, schema, bad_response,
    no_server or unsupported (a server without the endpoint, e.g. no /v1/score)."""

    type: Literal["http", "timeout", "connection", "ejected", "schema", "bad_response", "no_server", "unsupported"]
    message: str
    status: int | None = None


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ResultRow(BaseModel):
    """One line of the output file."""

    id: ItemId
    output: str | None = None
    server: str | None = None
    attempts: int = 0
    latency_s: float | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    # Only in schema/JSON mode: the parsed output. Named `parsed` here because `json` is a BaseModel
    # method; it is written as `json`.
    parsed: Any = Field(default=None, serialization_alias="json")
    meta: Any = None
    # Not written to the results file: whether the first answer was already valid JSON (JSON mode;
    # the summary's first-try valid rate), and the server's whole answer (the OpenAI Batch format).
    first_try_valid: bool | None = Field(default=None, exclude=True)
    response: dict[str, Any] | None = Field(default=None, exclude=True)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json_line(self, *, json_mode: bool) -> str:
        exclude = set()
        if not json_mode:
            exclude.add("parsed")
        if self.meta is None:
            exclude.add("meta")
        return self.model_dump_json(by_alias=True, exclude=exclude) + "\n"


class ScoreRow(BaseModel):
    """One line of the output file in `--score` mode; the numbers are None when the item failed."""

    id: ItemId
    tokens: int | None = None
    logprob: float | None = None
    mean_logprob: float | None = None
    perplexity: float | None = None
    server: str | None = None
    attempts: int = 0
    latency_s: float | None = None
    error: ErrorInfo | None = None
    meta: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json_line(self, *, json_mode: bool = False) -> str:
        return self.model_dump_json(exclude={"meta"} if self.meta is None else set()) + "\n"


Row = ResultRow | ScoreRow
Item = BatchItem | ScoreItem
