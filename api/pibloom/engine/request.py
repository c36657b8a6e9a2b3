"""What travels between the asyncio side and the inference thread."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "cancelled", "error"]

_ids = itertools.count(1)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # None: off; N: the chosen token's logprob and the N most likely
    prompt_logprobs: bool = False  # logprobs of the prompt's own tokens (echo, scoring)
    score_only: bool = False  # prefill only: score the prompt, generate nothing
    score_from: int = 1  # first prompt position whose logprob counts (earlier ones are context)
    n: int = 1  # choices: the prompt is prefilled once and its cache copied into n rows
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias); -100 bans
    grammar: str | None = None  # llguidance grammar the output must follow (structured output, tool calls)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class Event:
    """One step's output for one request: new text (may be empty) and, at the end, why it finished."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None  # sent once, with the first event
    generated: int = 0  # completion tokens so far (an end-of-sequence token is not counted)
    finish_reason: FinishReason | None = None
    error: str | None = None
    index: int = 0  # which choice (0 .. n-1) this event belongs to


@dataclass
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=lambda: next(_ids))
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set from the event loop; read by the inference thread at each step
    # Filled in by the engine:
    admitted_at: float | None = None  # left the waiting queue for a batch slot
    first_token_at: float | None = None
    last_token_at: float | None = None
    output_ids: list[int] = field(default_factory=list)

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, event: Event) -> None:
        """Hand an event to the request's asyncio queue from the inference thread."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
