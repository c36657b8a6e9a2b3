"""`/v1/chat/completions` answers and chunks: n choices, and tool calls parsed out of the reply."""

from __future__ import annotations

import time
import uuid

from ...serving.execute import Event, Result
from ...serving.tools import ToolCall, ToolRequest, parse_calls
from ..protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    DeltaMessage,
    FunctionCallOut,
    ToolCallDelta,
    ToolCallOut,
)
from ..protocol.common import Usage
from .logprobs import TokenText, chat_logprobs


def _finish(reason: str, calls: list[ToolCall]) -> str:
    return "tool_calls" if calls else reason


class ChatRenderer:
    def __init__(self, model: str, names: TokenText, logprobs: int | None, tools: ToolRequest | None = None) -> None:
        self.model = model
        self.names = names
        self.with_logprobs = logprobs is not None
        # With tools offered, a streamed reply is held until its choice ends: only then is it known
        # whether it was a tool call (sent as `tool_calls`) or text.
        self.tools = tools if tools is not None and tools.active else None
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.sent_role: set[int] = set()
        self.counted: dict[int, int] = {}  # per choice: tokens whose logprobs went out already
        self.held: dict[int, str] = {}

    def whole(self, result: Result) -> ChatCompletion:
        choices = []
        for c in result.choices:
            content: str | None = c.text
            calls: list[ToolCall] = []
            if self.tools is not None:
                content, calls = parse_calls(c.text, self.tools)
            message = AssistantMessage(content=content, tool_calls=[_out(call) for call in calls] or None)
            choice = ChatChoice(index=c.index, message=message, finish_reason=_finish(c.finish_reason, calls))
            if self.with_logprobs:
                choice.logprobs = chat_logprobs(c.logprobs, self.names)
            choices.append(choice)
        usage = Usage.of(result.prompt_tokens, result.completion_tokens)
        return ChatCompletion(model=self.model, choices=choices, usage=usage)

    def chunk(self, event: Event | None, usage: Usage | None) -> str | None:
        choices = []
        if event is not None:
            choice = self._choice(event)
            if choice is None and usage is None:
                return None
            if choice is not None:
                choices.append(choice)
        chunk = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)
        return chunk.model_dump_json(exclude_none=False)

    def _choice(self, event: Event) -> ChatChunkChoice | None:
        index = event.index
        delta = DeltaMessage(content=event.text)
        finish = event.finish_reason
        if self.tools is not None:
            self.held[index] = self.held.get(index, "") + event.text
            if finish is None:
                return None
            content, calls = parse_calls(self.held.pop(index), self.tools)
            delta = DeltaMessage(content=content, tool_calls=[_delta(i, call) for i, call in enumerate(calls)] or None)
            finish = _finish(finish, calls)
        if index not in self.sent_role:
            delta.role = "assistant"
            self.sent_role.add(index)
        choice = ChatChunkChoice(index=index, delta=delta, finish_reason=finish)
        if self.with_logprobs and event.logprobs and event.generated > self.counted.get(index, 0):
            choice.logprobs = chat_logprobs(event.logprobs, self.names)
        self.counted[index] = event.generated
        return choice


def _out(call: ToolCall) -> ToolCallOut:
    return ToolCallOut(id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))


def _delta(index: int, call: ToolCall) -> ToolCallDelta:
    return ToolCallDelta(index=index, id=call.id, function=FunctionCallOut(name=call.name, arguments=call.arguments))
