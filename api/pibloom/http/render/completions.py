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
        self.offset = 0
        self.counted = 0
        self.echoed = False

    def whole(self, result: Result) -> Completion:
        choice = CompletionChoice(text=(self.echo_text or "") + result.text, finish_reason=result.finish_reason)
        if self.with_logprobs:
            echoed = (self.prompt_ids, result.prompt_logprobs) if self.echo_text is not None else None
            choice.logprobs = completion_logprobs(result.logprobs, self.names, 0, echoed)
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        return Completion(model=self.model, choices=[choice], usage=usage)

    def chunk(self, event: Event | None, usage: Usage | None) -> str:
        choices = []
        if event is not None:
            text = event.text
            echoed = None
            if self.echo_text is not None and not self.echoed:
                self.echoed = True
                text = self.echo_text + text
                if event.prompt_logprobs is not None:
                    echoed = (self.prompt_ids, event.prompt_logprobs)
            choice = CompletionChoice(text=text, finish_reason=event.finish_reason)
            if self.with_logprobs:
                fresh = event.logprobs if event.logprobs and event.generated > self.counted else []
                choice.logprobs = completion_logprobs(fresh, self.names, self.offset, echoed)
            self.counted = event.generated
            self.offset += len(text)
            choices.append(choice)
        chunk = Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return chunk.model_dump_json()
