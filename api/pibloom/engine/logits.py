"""Per-row logits processors: OpenAI's presence and frequency penalties, `logit_bias`, and grammar masks.

A sequence gets a `RowShaper` only when its parameters ask for one of these, and `shape_rows` touches
only those rows, so requests that ask for nothing pay nothing (not even a copy of the logits).
"""

from __future__ import annotations

import collections
from typing import Any

import torch

from .constraints import GrammarState, allowed_tokens
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
        """`logits`: this row's float32 vector (modified in place and returned). The grammar's mask is
        not applied here: `shape_rows` computes every constrained row's at once."""
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
    constrained = [(row, s, s.grammar) for row, s in enumerate(shapers) if s is not None and s.grammar is not None]
    if constrained:
        _mask_grammars(logits, constrained)
    return logits


def _mask_grammars(logits: torch.Tensor, constrained: list[tuple[int, RowShaper, GrammarState]]) -> None:
    """Every constrained row's grammar mask, computed in one call and applied in one operation."""
    allowed = allowed_tokens([grammar for _, _, grammar in constrained], logits.shape[-1])
    for i in (~allowed.any(dim=1)).nonzero().flatten().tolist():
        # The grammar has nothing left to offer (a matcher in error): end the sequence cleanly.
        allowed[i, constrained[i][1].eos] = True
    if len(constrained) == logits.shape[0]:
        logits.masked_fill_(~allowed, float("-inf"))
    else:
        index = torch.tensor([row for row, _, _ in constrained])
        logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


def accept_rows(tokens: list[int], shapers: list[RowShaper | None]) -> None:
    for token, shaper in zip(tokens, shapers, strict=True):
        if shaper is not None:
            shaper.accept(token)
