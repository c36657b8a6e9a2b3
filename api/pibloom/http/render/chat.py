"""`/v1/chat/completions` answers and chunks."""

from __future__ import annotations

import time
import uuid

from ...serving.execute import Event, Result
from ..protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    DeltaMessage,
)
from ..protocol.common import Usage
from .logprobs import TokenText, chat_logprobs


class ChatRenderer:
    def __init__(self, model: str, names: TokenText, logprobs: int | None) -> None:
        self.model = model
        self.names = names
        self.with_logprobs = logprobs is not None
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.sent_role = False
        self.counted = 0  # tokens whose logprobs went out already

    def whole(self, result: Result) -> ChatCompletion:
        choice = ChatChoice(message=AssistantMessage(content=result.text), finish_reason=result.finish_reason)
        if self.with_logprobs:
            choice.logprobs = chat_logprobs(result.logprobs, self.names)
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        return ChatCompletion(model=self.model, choices=[choice], usage=usage)

    def chunk(self, event: Event | None, usage: Usage | None) -> str:
        choices = []
        if event is not None:
            delta = DeltaMessage(content=event.text)
            if not self.sent_role:
                delta.role, self.sent_role = "assistant", True
            choice = ChatChunkChoice(delta=delta, finish_reason=event.finish_reason)
            if self.with_logprobs and event.logprobs and event.generated > self.counted:
                choice.logprobs = chat_logprobs(event.logprobs, self.names)
            self.counted = event.generated
            choices.append(choice)
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return chunk.model_dump_json(exclude_none=False)
