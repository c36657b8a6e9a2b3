"""`/v1/score`, `/tokenize` and `/detokenize` bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from .common import ChatMessage, RequestBody, TopLogprob, Usage


class ScoreRequest(RequestBody):
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


class TokenizeRequest(RequestBody):
    model: str | None = Field(None, description="Optional (vLLM's field); when given it must name the model.")
    text: str | None = None
    prompt: str | None = Field(None, description="vLLM's name for `text`.")
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = Field(True, description="With `messages`: end with the assistant's turn.")
    add_special_tokens: bool = Field(False, description="With `text`: let the tokenizer add BOS/EOS.")


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    text: str | None = Field(None, description="The text that was tokenized (after the chat template).")


class DetokenizeRequest(RequestBody):
    model: str | None = Field(None, description="Optional (vLLM's field); when given it must name the model.")
    tokens: list[int] = Field(min_length=1)


class DetokenizeResponse(BaseModel):
    text: str
