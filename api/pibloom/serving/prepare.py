"""Request preparation: chat templating, tokenization and sampling validation, each rule written once.

Callers (the HTTP routes, through `Service`) hand over plain values: messages with a role and text,
and a `SamplingRequest`. What comes out is what the engine runs: prompt token ids and `SamplingParams`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..engine.constraints import grammar_tokenizer, has_grammar_tokenizer
from ..engine.loader import LoadedModel
from ..engine.memory import return_freed
from ..engine.request import SamplingParams
from ..settings import Settings
from .errors import bad_request
from .structured import OutputFormat, format_grammar, schema_grammar
from .tools import ToolRequest, call_block, call_schema, fallback_prompt, template_renders_tools

# OpenAI's bounds on the fields it documents.
MAX_CHOICES = 8
MAX_STOPS = 16


class Message(Protocol):
    role: str

    def text(self) -> str: ...

    def calls(self) -> list[tuple[str, str]]:
        """Tool calls an assistant made earlier: (function name, arguments as JSON text)."""
        ...


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
    n: int | None = None
    min_p: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    output: OutputFormat | None = None


@dataclass(frozen=True)
class Prepared:
    prompt_ids: list[int]
    params: SamplingParams


def chat_text(
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    add_generation_prompt: bool = True,
    tools: ToolRequest | None = None,
) -> str:
    """The conversation through the model's chat template. OpenAI's `developer` role is a system
    message to every template we serve. Tools, and tool calls and results in the history, go through
    the template when it renders tools, else through the fallback convention of `serving.tools`."""
    native = tools is not None and tools.active and template_renders_tools(tokenizer)
    conversation: list[dict[str, Any]] = []
    for m in messages:
        role = "system" if m.role == "developer" else m.role
        calls = m.calls()
        entry: dict[str, Any] = {"role": role, "content": m.text()}
        if native:
            if calls:
                entry["tool_calls"] = [{"type": "function", "function": _function(n, a)} for n, a in calls]
        elif role == "tool":
            entry = {"role": "user", "content": f"<tool_response>\n{m.text()}\n</tool_response>"}
        elif calls:
            blocks = "\n".join(call_block(n, a) for n, a in calls)
            entry["content"] = f"{m.text()}\n{blocks}" if m.text() else blocks
        conversation.append(entry)
    extra: dict[str, Any] = {}
    if tools is not None and tools.active:
        if native:
            extra["tools"] = [t.as_openai() for t in tools.tools]
        elif conversation and conversation[0]["role"] == "system":
            conversation[0]["content"] += "\n\n" + fallback_prompt(tools.tools)
        else:
            conversation.insert(0, {"role": "system", "content": fallback_prompt(tools.tools)})
    text: str = tokenizer.apply_chat_template(
        conversation, add_generation_prompt=add_generation_prompt, tokenize=False, **extra
    )
    return text


def _function(name: str, arguments: str) -> dict[str, Any]:
    try:
        parsed: Any = json.loads(arguments)
    except ValueError:
        parsed = arguments
    return {"name": name, "arguments": parsed}


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


def chat_prompt(loaded: LoadedModel, messages: Sequence[Message], tools: ToolRequest | None = None) -> list[int]:
    return prompt_ids(loaded.tokenizer, chat_text(loaded.tokenizer, messages, tools=tools), param="messages")


def vocab_size(loaded: LoadedModel) -> int:
    """Width of the model's logits (may exceed the tokenizer's own size)."""
    return max(int(getattr(loaded.model.config, "vocab_size", 0) or 0), len(loaded.tokenizer))


def grammar_ready(loaded: LoadedModel) -> bool:
    return has_grammar_tokenizer(loaded.tokenizer)


def warm_grammar(loaded: LoadedModel) -> None:
    if not grammar_ready(loaded):
        grammar_tokenizer(loaded.tokenizer, vocab_size(loaded))
        return_freed()  # building it left 27 MB of freed scratch resident (measured, SmolLM2-135M)


def output_grammar(loaded: LoadedModel, output: OutputFormat | None, tools: ToolRequest | None = None) -> str | None:
    """The grammar a reply must follow: a forced tool call, else the response format, else none."""
    if tools is not None and tools.constrained:
        return schema_grammar(call_schema(tools), loaded.tokenizer, vocab_size(loaded), param="tools")
    if output is None:
        return None
    return format_grammar(output, loaded.tokenizer, vocab_size(loaded))


def check_logit_bias(loaded: LoadedModel, bias: tuple[tuple[int, float], ...]) -> None:
    vocab = vocab_size(loaded)
    for token, value in bias:
        if not 0 <= token < vocab:
            raise bad_request(f"logit_bias token ids must be in [0, {vocab}); got {token}", param="logit_bias")
        if not -100 <= value <= 100:
            raise bad_request(f"logit_bias values must be in [-100, 100]; got {value}", param="logit_bias")


def check_capacity(settings: Settings, n: int, prompt_tokens: int, max_tokens: int, rows: int | None = None) -> None:
    """n choices are n rows of the batch (`rows`: the engine's, e.g. 1 without batching), each holding
    the prompt and up to `max_tokens` more."""
    if not 1 <= n <= MAX_CHOICES:
        raise bad_request(f"n must be between 1 and {MAX_CHOICES}, got {n}", param="n")
    rows = rows or settings.max_batch_size
    if n > rows:
        raise bad_request(
            f"n={n} choices x ({prompt_tokens} prompt + {max_tokens} max_tokens) tokens need {n} batch rows "
            f"of {prompt_tokens + max_tokens} tokens; this server holds at most {rows} sequences at once "
            "(PIBLOOM_MAX_BATCH_SIZE, PIBLOOM_BATCHING): ask for fewer choices",
            param="n",
            code="capacity_exceeded",
        )


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
    grammar: str | None = None,
    rows: int | None = None,
) -> SamplingParams:
    if len(sampling.stop) > MAX_STOPS:
        raise bad_request(f"at most {MAX_STOPS} stop sequences", param="stop")
    check_logit_bias(loaded, sampling.logit_bias)
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
    n = 1 if sampling.n is None else sampling.n
    check_capacity(settings, n, prompt_tokens, max_tokens, rows)
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
        n=n,
        min_p=sampling.min_p or 0.0,
        presence_penalty=sampling.presence_penalty or 0.0,
        frequency_penalty=sampling.frequency_penalty or 0.0,
        logit_bias=sampling.logit_bias,
        grammar=grammar,
    )
