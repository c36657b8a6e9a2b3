"""Engine logprobs in the shapes the OpenAI clients parse (chat and legacy completions)."""

from __future__ import annotations

from typing import Any

from ...serving.execute import TokenLogprob
from ..protocol.chat import ChatLogprobs, ChatTokenLogprob
from ..protocol.common import TopLogprob
from ..protocol.completions import CompletionLogprobs


class TokenText:
    """Token id -> display text, cached (the same ids recur in every top list)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self.tokenizer.decode([token_id])
        return text


def chat_logprobs(items: list[TokenLogprob], text: TokenText) -> ChatLogprobs:
    content = []
    for item in items:
        token = text(item.token_id)
        tops = [TopLogprob(token=text(i), logprob=v, bytes=list(text(i).encode())) for i, v in item.top]
        content.append(
            ChatTokenLogprob(token=token, logprob=item.logprob, bytes=list(token.encode()), top_logprobs=tops)
        )
    return ChatLogprobs(content=content)


def completion_logprobs(
    items: list[TokenLogprob],
    text: TokenText,
    offset: int = 0,
    prompt: tuple[list[int], list[TokenLogprob]] | None = None,
) -> CompletionLogprobs:
    """With `prompt` (echo): the prompt's tokens come first, the very first one without a logprob."""
    out = CompletionLogprobs()
    if prompt is not None:
        ids, scored = prompt
        out.tokens.append(text(ids[0]))
        out.token_logprobs.append(None)
        out.top_logprobs.append(None)
        out.text_offset.append(offset)
        offset += len(out.tokens[-1])
        items = [*scored, *items]
    for item in items:
        token = text(item.token_id)
        out.tokens.append(token)
        out.token_logprobs.append(item.logprob)
        out.top_logprobs.append({text(i): v for i, v in item.top} if item.top else None)
        out.text_offset.append(offset)
        offset += len(token)
    return out
