"""`/v1/models` and the health probes' bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class SamplingDefaults(BaseModel):
    temperature: float
    top_p: float
    repetition_penalty: float
    max_tokens: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pibloom"
    max_model_len: int = Field(description="Context size: prompt plus completion tokens.")
    max_tokens_limit: int = Field(description="Largest `max_tokens` a request may ask for.")
    defaults: SamplingDefaults = Field(description="What chat clients (the page, `pibloom chat`) start from.")
    capabilities: list[str] = Field(
        default_factory=list,
        description="Request features this server honours, e.g. `response_format` (structured output), "
        "`tools`, `n`, `logprobs`: clients show the matching controls.",
    )
    root: str | None = Field(None, description="For an alias: the model it names (as vLLM reports).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "loading", "draining", "failed"]
    model: str | None = None
    detail: str | None = None


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool
    error: str | None = None
