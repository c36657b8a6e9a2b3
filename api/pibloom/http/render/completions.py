"""`/v1/completions` answers and chunks, with `echo` (the prompt first) and legacy logprobs."""

from __future__ import annotations

import time
import uuid

from ...serving.execute import Event, Result
from ..protocol.common import Usage
from ..protocol.completions import Completion, CompletionChoice
from .logprobs import TokenText, completion_logprobs


class CompletionRenderer:
    def __init__(
        self, model: str, names: TokenText, logprobs: int | None, prompt_ids: list[int], echo_text: str | None
    ) -> None:
        self.model = model
        self.names = names
        self.with_logprobs = logprobs is not None
        self.prompt_ids = prompt_ids
        self.echo_text = echo_text  # None: no echo
        self.id, self.created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        # Per choice: characters sent (logprob offsets), tokens whose logprobs went out, echo sent.
        self.offset: dict[int, int] = {}
        self.counted: dict[int, int] = {}
        self.echoed: set[int] = set()

    def whole(self, result: Result) -> Completion:
        choices = []
        for c in result.choices:
            choice = CompletionChoice(
                index=c.index, text=(self.echo_text or "") + c.text, finish_reason=c.finish_reason
            )
            if self.with_logprobs:
                echoed = (self.prompt_ids, result.prompt_logprobs) if self.echo_text is not None else None
                choice.logprobs = completion_logprobs(c.logprobs, self.names, 0, echoed)
            choices.append(choice)
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        return Completion(model=self.model, choices=choices, usage=usage)

    def chunk(self, event: Event | None, usage: Usage | None) -> str:
        choices = []
        if event is not None:
            index = event.index
            text = event.text
            echoed = None
            if self.echo_text is not None and index not in self.echoed:
                self.echoed.add(index)
                text = self.echo_text + text
                if event.prompt_logprobs is not None:
                    echoed = (self.prompt_ids, event.prompt_logprobs)
            choice = CompletionChoice(index=index, text=text, finish_reason=event.finish_reason)
            if self.with_logprobs:
                fresh = event.logprobs if event.logprobs and event.generated > self.counted.get(index, 0) else []
                choice.logprobs = completion_logprobs(fresh, self.names, self.offset.get(index, 0), echoed)
            self.counted[index] = event.generated
            self.offset[index] = self.offset.get(index, 0) + len(text)
            choices.append(choice)
        chunk = Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return chunk.model_dump_json()
