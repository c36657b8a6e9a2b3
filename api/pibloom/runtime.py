"""The process's serving state: the model, the engine, readiness, and prompt/parameter handling."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from .engine.engine import Engine, EngineStoppedError, QueueFullError
from .engine.loader import LoadedModel, load_model
from .engine.request import Event, SamplingParams, TokenLogprob
from .errors import APIError, bad_request, overloaded
from .metrics import Metrics
from .protocol import ChatMessage, SamplingFields
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Result:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


class Runtime:
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics | None = None,
        loader: Callable[[Settings], LoadedModel] = load_model,
    ) -> None:
        self.settings = settings
        self.loader = loader
        self.metrics = metrics or Metrics()
        self.loaded: LoadedModel | None = None
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.draining = False
        self.created = int(time.time())

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load the model off the event loop (health probes answer meanwhile), on the thread that will
        then run the engine: torch's OpenMP keeps a team of worker threads per calling thread, and a
        second team (a loader thread's, left idle) makes libgomp stop spinning between operations
        in every team, which cost ~30% of a decode step (measured)."""
        loop = asyncio.get_running_loop()
        handed: asyncio.Future[Engine] = loop.create_future()

        def load_and_serve() -> None:
            try:
                engine = self._engine(self.loader(self.settings))
            except Exception as exc:
                loop.call_soon_threadsafe(handed.set_exception, exc)
                return
            engine.run(started=lambda: loop.call_soon_threadsafe(handed.set_result, engine))

        threading.Thread(target=load_and_serve, name="pibloom-engine", daemon=True).start()
        try:
            engine = await handed
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.load_error)
            return
        self._attached(engine)

    def attach(self, loaded: LoadedModel) -> None:
        """Serve an already loaded model (tests share one across servers) on a new engine thread."""
        engine = self._engine(loaded)
        engine.start()
        self._attached(engine)

    def _engine(self, loaded: LoadedModel) -> Engine:
        s = self.settings
        self.metrics.bind(loaded.name)
        return Engine(
            loaded,
            max_batch_size=s.max_batch_size,
            max_queue=s.max_queue,
            prefill_chunk=s.prefill_chunk,
            batching=s.batching,
            metrics=self.metrics,
        )

    def _attached(self, engine: Engine) -> None:
        loaded = engine.loaded
        self.loaded, self.engine = loaded, engine
        self.metrics.ready.set(1)
        log.info(
            "model %s ready on %s (%s%s, %s forward pass)",
            loaded.name,
            loaded.device,
            loaded.dtype,
            ", int4 weights" if loaded.int4 else "",
            "lean" if loaded.lean_forward is not None else "transformers'",
        )

    async def drain(self, timeout: float) -> None:
        """Stop admitting work, let running requests finish (up to `timeout`), stop the engine."""
        self.draining = True
        self.metrics.ready.set(0)
        engine = self.engine
        if engine is None:
            return
        engine.stop_accepting()
        await asyncio.to_thread(engine.wait_idle, timeout)
        await asyncio.to_thread(engine.shutdown, 5.0)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.engine.alive and not self.draining

    @property
    def live(self) -> bool:
        # Loading is alive; a dead inference thread is not (restart the worker rather than hang requests).
        return self.load_error is None and (self.engine is None or self.engine.alive)

    def status(self) -> str:
        if self.load_error or (self.engine is not None and not self.engine.alive):
            return "failed"
        if self.draining:
            return "draining"
        return "ok" if self.engine is not None else "loading"

    @property
    def tokenizer(self) -> Any:
        loaded, _ = self.require()
        return loaded.tokenizer

    @property
    def model_name(self) -> str:
        if self.loaded is not None:
            return self.loaded.name
        return self.settings.model_name or self.settings.model

    def require(self) -> tuple[LoadedModel, Engine]:
        if self.loaded is None or self.engine is None or not self.ready:
            state = self.status()
            message = {
                "loading": "the model is still loading",
                "draining": "the server is shutting down",
            }.get(state, "the model is not available")
            raise APIError(
                503,
                message,
                type="server_error",
                code=f"model_{state}",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            )
        return self.loaded, self.engine

    def check_model(self, requested: str) -> None:
        names = {self.model_name, self.model_name.split("/")[-1]}
        if requested not in names:
            raise APIError(
                404,
                f"The model '{requested}' does not exist; this server serves '{self.model_name}'",
                code="model_not_found",
                param="model",
            )

    # ------------------------------------------------------------------ prompts and parameters

    def chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        loaded, _ = self.require()
        conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        text = loaded.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return self._encode(text)

    def text_prompt(self, prompt: str | list[str] | list[int]) -> list[int]:
        loaded, _ = self.require()
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            ids = [int(t) for t in prompt]  # type: ignore[arg-type]
            vocab = len(loaded.tokenizer)
            if any(t < 0 or t >= vocab for t in ids):
                raise bad_request(f"token ids must be in [0, {vocab})", param="prompt")
            return ids
        text = prompt if isinstance(prompt, str) else str(prompt[0])
        return self._encode(text)

    def _encode(self, text: str) -> list[int]:
        loaded, _ = self.require()
        ids: list[int] = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise bad_request("the prompt is empty after tokenization", param="messages")
        return ids

    def sampling(
        self,
        body: SamplingFields,
        prompt_tokens: int,
        default_max: int | None = None,
        *,
        logprobs: int | None = None,
        prompt_logprobs: bool = False,
    ) -> SamplingParams:
        loaded, _ = self.require()
        s = self.settings
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name):
                raise bad_request(
                    f"'{name}' is not supported by this server; use 'repetition_penalty'",
                    param=name,
                    code="unsupported_field",
                )
        limit = loaded.max_context
        if prompt_tokens >= limit:
            raise bad_request(
                f"This model's maximum context length is {limit} tokens, but the prompt has {prompt_tokens} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if requested is not None:
            if not 1 <= requested <= s.max_tokens_limit:
                raise bad_request(
                    f"max_tokens must be between 1 and {s.max_tokens_limit}, got {requested}",
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
            max_tokens = min(default_max or s.max_tokens_default, limit - prompt_tokens)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            repetition_penalty=body.repetition_penalty or 1.0,
            stop=body.stop_list(),
            seed=body.seed,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    # ------------------------------------------------------------------ running

    def generation_error(self, event: Event) -> APIError:
        """A failed generation: 503 (retry elsewhere) when the engine itself is gone, else 500."""
        if self.engine is not None and not self.engine.alive:
            return APIError(
                503,
                event.error or "the inference engine stopped",
                type="server_error",
                code="engine_failed",
                headers={"Retry-After": str(self.settings.retry_after_seconds)},
            )
        return APIError(500, event.error or "generation failed", type="server_error", code="generation_failed")

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Event]:
        _, engine = self.require()
        events = engine.stream(prompt_ids, params)
        try:
            try:
                first = await anext(events)
            except (QueueFullError, EngineStoppedError) as exc:
                raise overloaded(str(exc), self.settings.retry_after_seconds) from exc
            yield first
            if first.finish_reason is None:
                async for event in events:
                    yield event
        finally:
            # Closing the engine's generator cancels the request when we stop early (client gone).
            await events.aclose()

    async def complete(self, prompt_ids: list[int], params: SamplingParams) -> Result:
        parts: list[str] = []
        tokens = 0
        finish = "stop"
        logprobs: list[TokenLogprob] = []
        prompt_logprobs: list[TokenLogprob] = []
        async for event in self.stream(prompt_ids, params):
            parts.append(event.text)
            tokens = event.generated
            if event.logprobs:
                logprobs.extend(event.logprobs)  # an end-of-sequence token's entry is cut below
            if event.prompt_logprobs is not None:
                prompt_logprobs = event.prompt_logprobs
            if event.finish_reason is not None:
                if event.finish_reason == "error":
                    raise self.generation_error(event)
                finish = event.finish_reason
        return Result("".join(parts), finish, len(prompt_ids), tokens, logprobs[:tokens], prompt_logprobs)

    async def score(self, texts: list[str], context: str | None, top: int) -> tuple[list[list[TokenLogprob]], int]:
        """Log-probabilities of each text's tokens given `context`; returns them and the tokens processed.

        Without a context the text is conditioned on the BOS token, so that its first token is scored too.
        """
        loaded, engine = self.require()
        prefix = (
            self._encode(context) if context else ([loaded.bos_token_id] if loaded.bos_token_id is not None else [])
        )
        inputs = []
        for i, text in enumerate(texts):
            ids = prefix + self._encode(text)
            if len(ids) > loaded.max_context:
                raise bad_request(
                    f"This model's maximum context length is {loaded.max_context} tokens, but text {i} "
                    f"(with its context) has {len(ids)} tokens",
                    param="text",
                    code="context_length_exceeded",
                )
            if len(ids) < 2:
                raise bad_request(f"text {i} is too short to score", param="text")
            inputs.append(ids)
        start = max(len(prefix), 1)
        params = SamplingParams(max_tokens=1, prompt_logprobs=True, score_only=True, score_from=start, logprobs=top)
        # A long list must not overflow the waiting queue by itself: keep at most a batch in flight.
        gate = asyncio.Semaphore(engine.max_rows)

        async def one(ids: list[int]) -> list[TokenLogprob]:
            async with gate:
                async for event in self.stream(ids, params):
                    if event.finish_reason == "error":
                        raise self.generation_error(event)
                    if event.prompt_logprobs is not None:
                        return event.prompt_logprobs
            raise APIError(500, "scoring produced no result", type="server_error")

        results = await asyncio.gather(*(one(ids) for ids in inputs))
        return list(results), sum(len(ids) for ids in inputs)
