"""Request preparation: chat templating, tokenization and sampling validation, each rule written once.

Callers (the HTTP routes, through `Service`) hand over plain values: messages with a role and text,
and a `SamplingRequest`. What comes out is what the engine runs: prompt token ids and `SamplingParams`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine.loader import LoadedModel
from ..engine.request import SamplingParams
from ..settings import Settings
from .errors import bad_request


class Message(Protocol):
    role: str

    def text(self) -> str: ...


@dataclass(frozen=True)
class SamplingRequest:
    """What a client asked for; None means "not given" (defaults are applied here, not by callers)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams


def chat_text(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
    """The conversation through the model's chat template. OpenAI's `developer` role is a system
    message to every template we serve."""
    conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
    text: str = tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)
    return text


def encode(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return ids


def prompt_ids(tokenizer: Any, text: str, *, param: str) -> list[int]:
    """Token ids of a prompt, which must not be empty."""
    ids = encode(tokenizer, text)
    if not ids:
        raise bad_request("the prompt is empty after tokenization", param=param)
    return ids


def check_token_ids(ids: Sequence[int], tokenizer: Any, *, param: str) -> list[int]:
    vocab = len(tokenizer)
    bad = [t for t in ids if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"token ids must be in [0, {vocab}); got {bad[:5]}", param=param)
    return [int(t) for t in ids]


def chat_prompt(loaded: LoadedModel, messages: Sequence[Message]) -> list[int]:
    return prompt_ids(loaded.tokenizer, chat_text(loaded.tokenizer, messages), param="messages")


def text_prompt(loaded: LoadedModel, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return check_token_ids(prompt, loaded.tokenizer, param="prompt")  # type: ignore[arg-type]
    text = prompt if isinstance(prompt, str) else str(prompt[0])
    return prompt_ids(loaded.tokenizer, text, param="messages")


def check_context(loaded: LoadedModel, prompt_tokens: int, *, param: str = "messages") -> None:
    limit = loaded.max_context
    if prompt_tokens >= limit:
        raise bad_request(
            f"This model's maximum context length is {limit} tokens, but the prompt has {prompt_tokens} tokens",
            param=param,
            code="context_length_exceeded",
        )


def sampling_params(
    loaded: LoadedModel,
    settings: Settings,
    sampling: SamplingRequest,
    prompt_tokens: int,
    *,
    default_max: int | None = None,
    logprobs: int | None = None,
    prompt_logprobs: bool = False,
) -> SamplingParams:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(sampling, name):
            raise bad_request(
                f"'{name}' is not supported by this server; use 'repetition_penalty'",
                param=name,
                code="unsupported_field",
            )
    check_context(loaded, prompt_tokens)
    limit = loaded.max_context
    requested = sampling.max_tokens
    if requested is not None:
        if not 1 <= requested <= settings.max_tokens_limit:
            raise bad_request(
                f"max_tokens must be between 1 and {settings.max_tokens_limit}, got {requested}",
                param="max_tokens",
            )
        if prompt_tokens + requested > limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens, but {prompt_tokens} prompt "
                f"tokens + {requested} max_tokens = {prompt_tokens + requested}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        max_tokens = requested
    else:
        max_tokens = min(default_max or settings.max_tokens_default, limit - prompt_tokens)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if sampling.temperature is None else sampling.temperature,
        top_p=1.0 if sampling.top_p is None else sampling.top_p,
        top_k=sampling.top_k or 0,
        repetition_penalty=sampling.repetition_penalty or 1.0,
        stop=sampling.stop,
        seed=sampling.seed,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )
