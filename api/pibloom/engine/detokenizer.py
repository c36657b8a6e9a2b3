"""Streaming text out of token ids: incremental decoding and stop strings."""

from __future__ import annotations

from typing import Any


class IncrementalDecoder:
    """Turns a growing list of ids into text deltas.

    Decoding one id at a time is wrong for byte-level BPE (a character can span tokens) and for
    tokenizers that add spaces depending on the neighbour, so each delta is the difference between
    decoding a short window with and without the new ids; a trailing replacement character means a
    multi-byte character is not complete yet, and the text waits for the next token.
    """

    def __init__(self, tokenizer: Any, prompt_tail: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_tail)
        self.prefix = 0
        self.read = len(self.ids)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix :], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


class StopMatcher:
    """Finds stop strings in streamed text, holding back a tail that could still become one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string was hit)."""
        if not self.stops:
            return delta, False
        text = self.pending + delta
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return text[: min(hits)], True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        self.pending = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out
