"""Per-row logits processors: OpenAI's presence and frequency penalties, `logit_bias`, and grammar masks.

A sequence gets a `RowShaper` only when its parameters ask for one of these, and `shape_rows` touches
only those rows, so requests that ask for nothing pay nothing (not even a copy of the logits).
"""

from __future__ import annotations

import collections
from typing import Any

import torch

from .constraints import GrammarState
from .request import SamplingParams


class RowShaper:
    """What one sequence does to its own logits before a token is chosen, and learns from the choice."""

    def __init__(self, params: SamplingParams, tokenizer: Any, width: int, eos_ids: frozenset[int]) -> None:
        self.params = params
        self.counts: collections.Counter[int] = collections.Counter()  # generated tokens only, as OpenAI counts
        self.eos = sorted(t for t in eos_ids if t < width)
        self.grammar = GrammarState(params.grammar, tokenizer, width) if params.grammar else None
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if params.logit_bias:
            ids, values = zip(*params.logit_bias, strict=True)
            self.bias = torch.tensor(ids, dtype=torch.long), torch.tensor(values, dtype=torch.float32)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits`: this row's float32 vector (modified in place and returned)."""
        p = self.params
        if self.counts and (p.presence_penalty or p.frequency_penalty):
            ids = torch.tensor(list(self.counts), dtype=torch.long)
            seen = torch.tensor(list(self.counts.values()), dtype=torch.float32)
            logits.index_add_(0, ids, -(seen * p.frequency_penalty + p.presence_penalty))
        if self.bias is not None:
            ids, values = self.bias
            logits.index_add_(0, ids, values)
            # -100 bans the token outright, as OpenAI documents.
            logits.index_fill_(0, ids[values <= -100], float("-inf"))
        if self.grammar is not None:
            allowed = self.grammar.allowed(logits.shape[-1])
            if not bool(allowed.any()):
                # The grammar has nothing left to offer (a matcher in error): end the sequence cleanly.
                allowed[self.eos] = True
            logits.masked_fill_(~allowed, float("-inf"))
        return logits

    def accept(self, token: int) -> None:
        self.counts[token] += 1
        if self.grammar is not None:
            self.grammar.accept(token)


def needs_shaper(params: SamplingParams) -> bool:
    return bool(params.presence_penalty or params.frequency_penalty or params.logit_bias or params.grammar)


def shape_rows(logits: torch.Tensor, shapers: list[RowShaper | None]) -> torch.Tensor:
    """Apply each row's shaper to its row of `logits` (float32 copy made only when some row has one)."""
    if not any(shapers):
        return logits
    logits = logits.to(torch.float32, copy=True)
    for row, shaper in enumerate(shapers):
        if shaper is not None:
            shaper.apply(logits[row])
    return logits


def accept_rows(tokens: list[int], shapers: list[RowShaper | None]) -> None:
    for token, shaper in zip(tokens, shapers, strict=True):
        if shaper is not None:
            shaper.accept(token)
