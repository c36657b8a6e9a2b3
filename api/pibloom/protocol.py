"""Request and response bodies: piBLOOM's original /chat/ and the OpenAI-compatible /v1 API.

Request models forbid unknown fields, so an OpenAI option this server does not implement is rejected
by name (400) instead of being silently ignored.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# --- piBLOOM original ---------------------------------------------------------------------------


class ChatRequest(BaseModel):
    content: Annotated[str, Field(min_length=1, description="The user's message.")]

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content must not be empty")
        return value


class ChatResponse(BaseModel):
    data: str


# --- OpenAI shared ------------------------------------------------------------------------------


class Strict(BaseModel):
    # strict: no silent coercion (1 is not a boolean, "5" is not an integer), as the schema says.
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


Stop = str | list[str] | None


class SamplingFields(Strict):
    """Sampling options shared by chat and text completions (OpenAI names plus common extensions)."""

    model: str = Field(description="The served model's id (see /v1/models).")
    max_tokens: int | None = Field(None, description="Most tokens to generate.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, description="Extension: keep only the k most likely tokens.")
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0, description="Extension (1.0: off).")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    stop: Stop = None
    seed: int | None = Field(None, description="Same seed and input, same output.")
    n: int | None = Field(None, ge=1, le=1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted for compatibility; not stored.")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: Stop) -> Stop:
        items = [value] if isinstance(value, str) else (value or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in items):
            raise ValueError("stop sequences must not be empty")
        return value

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# --- chat completions ---------------------------------------------------------------------------


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, description="Newer name for max_tokens.")
    logprobs: bool = Field(False, description="Return the log-probability of each output token.")
    top_logprobs: int | None = Field(None, ge=0, le=20, description="Also the N most likely tokens at each step.")

    @field_validator("messages")
    @classmethod
    def _has_text(cls, value: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.text().strip() for m in value):
            raise ValueError("messages must contain some text")
        return value


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


# --- text completions ---------------------------------------------------------------------------


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] = Field(description="Text, a one-item list, or token ids.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Logprobs of each token and the N most likely.")
    echo: bool = Field(False, description="Return the prompt before the completion (with its logprobs).")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str] | list[int]) -> str | list[str] | list[int]:
        if isinstance(value, list):
            if not value:
                raise ValueError("prompt must not be empty")
            if isinstance(value[0], str) and len(value) != 1:
                raise ValueError("only one prompt per request is supported")
        if isinstance(value, str) and not value:
            raise ValueError("prompt must not be empty")
        return value


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: _new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# --- models -------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pibloom"
    max_model_len: int = Field(description="Context size: prompt plus completion tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- health -------------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok", "loading", "draining", "failed"]
    model: str | None = None
    detail: str | None = None


# --- scoring and tokenization -------------------------------------------------------------------


class ScoreRequest(Strict):
    model: str | None = Field(None, description="Optional; when given it must be the served model.")
    text: str | list[str] = Field(description="A text, or a list of texts, to score.")
    context: str | None = Field(None, description="Conditioned on but not scored (shared by every text).")
    logprobs: bool = Field(False, description="Also return each token with its log-probability.")
    top_logprobs: int = Field(0, ge=0, le=20, description="With `logprobs`: the N most likely tokens too.")

    @field_validator("text")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("text must not be an empty list")
        if len(items) > 256:
            raise ValueError("at most 256 texts per request")
        if any(not t for t in items):
            raise ValueError("texts must not be empty")
        return value


class ScoredToken(BaseModel):
    id: int
    token: str
    logprob: float
    top_logprobs: list[TopLogprob] | None = None


class Score(BaseModel):
    index: int
    tokens: int = Field(description="How many tokens were scored.")
    logprob: float = Field(description="Sum of the tokens' natural-log probabilities.")
    mean_logprob: float
    perplexity: float = Field(description="exp(-mean_logprob)")
    token_logprobs: list[ScoredToken] | None = None


class ScoreResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Score]
    usage: Usage


class TokenizeRequest(Strict):
    text: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = Field(True, description="With `messages`: end with the assistant's turn.")
    add_special_tokens: bool = Field(False, description="With `text`: let the tokenizer add BOS/EOS.")


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    text: str | None = Field(None, description="The text that was tokenized (after the chat template).")


class DetokenizeRequest(Strict):
    tokens: list[int] = Field(min_length=1)


class DetokenizeResponse(BaseModel):
    text: str
