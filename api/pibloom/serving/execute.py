"""Execution: running prepared requests on the engine, streamed or collected, and scoring texts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from ..engine.request import Event, SamplingParams, TokenLogprob
from ..engine.scheduler import Engine, EngineStoppedError, QueueFullError, TooLargeError
from .errors import ErrorKind, ServingError, bad_request, unavailable
from .prepare import Prepared

__all__ = ["Choice", "Event", "Generation", "Result", "Started", "TokenLogprob", "score_all"]


@dataclass
class Choice:
    index: int
    text: str = ""
    finish_reason: str = "stop"
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Result:
    """A whole answer: one `Choice` per requested choice (n), the prompt shared by all of them."""

    choices: list[Choice]
    prompt_tokens: int
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str:
        return self.choices[0].finish_reason

    @property
    def completion_tokens(self) -> int:
        """Every choice's tokens, as OpenAI's usage counts them."""
        return sum(c.completion_tokens for c in self.choices)


@dataclass
class Started:
    """A generation whose first event has arrived: admission succeeded, so a stream may begin."""

    first: Event
    rest: AsyncIterator[Event]

    async def aclose(self) -> None:
        await self.rest.aclose()  # type: ignore[attr-defined]


class Generation:
    """One prepared request, not yet submitted: `start()` for a stream, `collect()` for one answer."""

    def __init__(self, engine: Engine, prepared: Prepared, retry_after: int) -> None:
        self.engine = engine
        self.prompt_ids = prepared.prompt_ids
        self.params = prepared.params
        self.retry_after = retry_after

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    def failure(self, event: Event) -> ServingError:
        """A failed generation: unavailable (retry elsewhere) when the engine itself is gone, else internal."""
        if not self.engine.alive:
            return unavailable(event.error or "the inference engine stopped", self.retry_after, code="engine_failed")
        return ServingError(ErrorKind.INTERNAL, event.error or "generation failed", code="generation_failed")

    async def events(self) -> AsyncIterator[Event]:
        """Every event of the request; a full queue or a stopped engine is an `unavailable` error before
        the first one. Leaving early (client gone) cancels the request in the engine."""
        events = self.engine.stream(self.prompt_ids, self.params)
        try:
            try:
                first = await anext(events)
            except (QueueFullError, EngineStoppedError) as exc:
                raise unavailable(str(exc), self.retry_after) from exc
            except TooLargeError as exc:
                raise bad_request(str(exc), param="max_tokens", code="kv_budget_exceeded") from exc
            yield first
            # The engine's stream ends by itself once every choice has finished (or on an error).
            async for event in events:
                yield event
        finally:
            await events.aclose()

    async def start(self) -> Started:
        """Submit and wait for the first event, so that overload is answered before any stream starts."""
        events = self.events()
        first = await anext(events)
        return Started(first, events)

    async def collect(self) -> Result:
        choices = [Choice(i) for i in range(self.params.n)]
        prompt_logprobs: list[TokenLogprob] = []
        async for event in self.events():
            choice = choices[event.index]
            choice.text += event.text
            choice.completion_tokens = event.generated
            if event.logprobs:
                choice.logprobs.extend(event.logprobs)  # an end-of-sequence token's entry is cut below
            if event.prompt_logprobs is not None:
                prompt_logprobs = event.prompt_logprobs
            if event.finish_reason is not None:
                if event.finish_reason == "error":
                    raise self.failure(event)
                choice.finish_reason = event.finish_reason
        for choice in choices:
            del choice.logprobs[choice.completion_tokens :]
        return Result(choices, self.prompt_tokens, prompt_logprobs)


async def score_all(
    engine: Engine, inputs: list[list[int]], params: SamplingParams, retry_after: int
) -> list[list[TokenLogprob]]:
    """The prompt logprobs of every input, at most a batch of them in flight at once (a long list must
    not overflow the waiting queue by itself)."""
    gate = asyncio.Semaphore(engine.max_rows)

    async def one(ids: list[int]) -> list[TokenLogprob]:
        generation = Generation(engine, Prepared(ids, params), retry_after)
        async with gate:
            async for event in generation.events():
                if event.finish_reason == "error":
                    raise generation.failure(event)
                if event.prompt_logprobs is not None:
                    return event.prompt_logprobs
        raise ServingError(ErrorKind.INTERNAL, "scoring produced no result")

    return list(await asyncio.gather(*(one(ids) for ids in inputs)))
