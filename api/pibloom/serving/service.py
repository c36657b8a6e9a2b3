"""What the HTTP routes call: one method per thing a client asks for, from plain values to a
`Generation` (or a finished answer), with every check on the way. Routes parse and render only."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.request import SamplingParams, TokenLogprob
from ..metrics import Metrics
from ..settings import Settings
from . import prepare
from .errors import bad_request
from .execute import Generation, score_all
from .lifecycle import ModelHost
from .prepare import Message, Prepared, SamplingRequest
from .tools import ToolRequest, check_tools


@dataclass(frozen=True)
class Tokens:
    ids: list[int]
    text: str
    max_model_len: int


@dataclass(frozen=True)
class Scores:
    per_text: list[list[TokenLogprob]]
    processed: int  # every token that went through the model, contexts included


class Service:
    def __init__(self, host: ModelHost) -> None:
        self.host = host

    @property
    def settings(self) -> Settings:
        return self.host.settings

    @property
    def metrics(self) -> Metrics:
        return self.host.metrics

    @property
    def model_name(self) -> str:
        return self.host.model_name

    @property
    def tokenizer(self) -> Any:
        return self.host.require().loaded.tokenizer

    async def structured_ready(self, sampling: SamplingRequest, tools: ToolRequest | None = None) -> None:
        """Before a request that asks for structured output (a response format, or a tool call it
        forces): llguidance's view of the vocabulary, built off the event loop by the first such
        request (0.4 s) and then kept, so the checks in `chat` and `completion` find it."""
        if sampling.output is None and (tools is None or not tools.constrained):
            return
        loaded, engine = self.host.require()
        if not prepare.grammar_ready(loaded):
            await asyncio.to_thread(prepare.warm_grammar, loaded)
            engine.side_work_ended()

    def chat(
        self,
        messages: Sequence[Message],
        sampling: SamplingRequest,
        *,
        model: str | None = None,
        logprobs: int | None = None,
        tools: ToolRequest | None = None,
    ) -> Generation:
        self.host.check_model(model)
        loaded, engine = self.host.require()
        if tools is not None:
            tools = check_tools(tools)
        ids = prepare.chat_prompt(loaded, messages, tools)
        grammar = prepare.output_grammar(loaded, sampling.output, tools)
        params = prepare.sampling_params(
            loaded, self.settings, sampling, len(ids), logprobs=logprobs, grammar=grammar, rows=engine.max_rows
        )
        return Generation(engine, Prepared(ids, params), self.host.retry_after)

    def completion(
        self,
        prompt: str | list[str] | list[int],
        sampling: SamplingRequest,
        *,
        model: str | None = None,
        default_max: int | None = None,
        logprobs: int | None = None,
        echo: bool = False,
    ) -> Generation:
        self.host.check_model(model)
        loaded, engine = self.host.require()
        ids = prepare.text_prompt(loaded, prompt)
        grammar = prepare.output_grammar(loaded, sampling.output)
        params = prepare.sampling_params(
            loaded,
            self.settings,
            sampling,
            len(ids),
            default_max=default_max,
            logprobs=logprobs,
            prompt_logprobs=echo and logprobs is not None,
            grammar=grammar,
            rows=engine.max_rows,
        )
        return Generation(engine, Prepared(ids, params), self.host.retry_after)

    async def score(self, texts: list[str], context: str | None, top: int, *, model: str | None = None) -> Scores:
        """Log-probabilities of each text's tokens given `context`.

        Without a context the text is conditioned on the BOS token, so that its first token is scored too.
        """
        self.host.check_model(model)
        loaded, engine = self.host.require()
        tokenizer = loaded.tokenizer
        if context:
            prefix = prepare.prompt_ids(tokenizer, context, param="context")
        else:
            prefix = [loaded.bos_token_id] if loaded.bos_token_id is not None else []
        inputs = []
        for i, text in enumerate(texts):
            ids = prefix + prepare.prompt_ids(tokenizer, text, param="text")
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
        results = await score_all(engine, inputs, params, self.host.retry_after)
        return Scores(results, sum(len(ids) for ids in inputs))

    def tokenize_chat(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        model: str | None = None,
        tools: ToolRequest | None = None,
    ) -> Tokens:
        """Exactly the prompt the chat endpoint would send for these messages (`usage.prompt_tokens`)."""
        self.host.check_model(model)
        loaded = self.host.require().loaded
        text = prepare.chat_text(loaded.tokenizer, messages, add_generation_prompt=add_generation_prompt, tools=tools)
        return Tokens(prepare.encode(loaded.tokenizer, text), text, loaded.max_context)

    def tokenize_text(self, text: str, *, add_special_tokens: bool = False, model: str | None = None) -> Tokens:
        self.host.check_model(model)
        loaded = self.host.require().loaded
        ids = prepare.encode(loaded.tokenizer, text, add_special_tokens=add_special_tokens)
        return Tokens(ids, text, loaded.max_context)

    def detokenize(self, ids: Sequence[int], *, param: str = "tokens", model: str | None = None) -> str:
        self.host.check_model(model)
        tokenizer = self.host.require().loaded.tokenizer
        text: str = tokenizer.decode(prepare.check_token_ids(ids, tokenizer, param=param))
        return text
