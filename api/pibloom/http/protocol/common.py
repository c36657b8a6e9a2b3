"""What the OpenAI-shaped routes share: request bodies, sampling fields, messages, usage.

Request bodies keep the fields they do not know (`extra="allow"`) so that `pibloom.http.fields` can
ignore them (logged once each) or, with `PIBLOOM_STRICT_FIELDS=true`, refuse them by name. Fields
OpenAI defines that this server cannot honour are refused by name in either mode (`REJECTED`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ...serving.prepare import MAX_CHOICES, MAX_STOPS, SamplingRequest
from ...serving.structured import OutputFormat


class RequestBody(BaseModel):
    # strict: no silent coercion (1 is not a boolean, "5" is not an integer), as the schema says.
    # extra="allow": unknown fields are kept aside for `pibloom.http.fields` to judge.
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


# OpenAI request fields this server cannot honour, with why (a 400 naming them when given a value).
REJECTED: dict[str, str] = {
    "audio": "this server generates text only",
    "modalities": 'this server generates text only (omit it or send ["text"])',
    "prediction": "predicted outputs are not implemented",
    "web_search_options": "this server has no web search",
    "functions": "the deprecated 'functions' is not implemented; use 'tools'",
    "function_call": "the deprecated 'function_call' is not implemented; use 'tool_choice'",
    "suffix": "text after the insertion point (suffix) is not implemented",
    "best_of": "best_of is not implemented; use n",
}

# Values of a REJECTED field that ask for nothing this server lacks.
HARMLESS: dict[str, tuple[Any, ...]] = {"modalities": (["text"],), "best_of": (1,)}


class StreamOptions(RequestBody):
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt: int, completion: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


Stop = str | list[str] | None


class TextFormat(RequestBody):
    type: Literal["text"]


class JsonObjectFormat(RequestBody):
    type: Literal["json_object"]


class JsonSchemaSpec(RequestBody):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON Schema the reply must validate against.")
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced strictly.")


class JsonSchemaFormat(RequestBody):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class SamplingFields(RequestBody):
    """Sampling options shared by chat and text completions (OpenAI names plus common extensions)."""

    model: str | None = Field(None, description="The served model's id or an alias (see /v1/models); optional.")
    max_tokens: int | None = Field(None, description="Most tokens to generate (per choice).")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="Extension: keep only the k most likely tokens.")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Extension: drop tokens below min_p x the top one.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="Extension (1.0: off).")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, description="Token id -> bias added to its logit; -100 bans.")
    stop: Stop = None
    seed: int | None = Field(None, description="Same seed and input, same output (choice i uses seed + i).")
    n: int | None = Field(None, ge=1, le=MAX_CHOICES, description="Choices to generate from one prefilled prompt.")
    response_format: ResponseFormat | None = Field(None, description="`json_object` or `json_schema`: enforced.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Accepted for compatibility and ignored: they change nothing a single self-hosted model does.
    user: str | None = Field(None, description="Accepted; not stored.")
    store: bool | None = Field(None, description="Accepted; nothing is stored.")
    metadata: dict[str, Any] | None = Field(None, description="Accepted; ignored.")
    service_tier: str | None = Field(None, description="Accepted; ignored (one tier).")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Stop) -> Stop:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids (integers as strings), got {key!r}")
        return value

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def output_format(self) -> OutputFormat | None:
        fmt = self.response_format
        if isinstance(fmt, JsonObjectFormat):
            return OutputFormat("json_object")
        if isinstance(fmt, JsonSchemaFormat):
            return OutputFormat("json_schema", fmt.json_schema.schema_)
        return None

    def sampling(self) -> SamplingRequest:
        """The sampling request in the serving layer's terms."""
        return SamplingRequest(
            max_tokens=getattr(self, "max_completion_tokens", None) or self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=self.stop_list(),
            seed=self.seed,
            n=self.n,
            min_p=self.min_p,
            logit_bias=tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items()),
            output=self.output_format(),
        )


class TextPart(RequestBody):
    type: Literal["text"]
    text: str


class FunctionCall(RequestBody):
    name: str
    arguments: str = Field(description="The arguments as JSON text, as OpenAI sends them.")


class ToolCallIn(RequestBody):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(RequestBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, description="An assistant's earlier tool calls.")
    tool_call_id: str | None = Field(None, description="On a `tool` message: the call it answers.")

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def calls(self) -> list[tuple[str, str]]:
        return [(c.function.name, c.function.arguments) for c in self.tool_calls or []]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
