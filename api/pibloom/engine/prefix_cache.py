"""Automatic prefix caching: the KV cache of finished sequences, kept and reused by later requests
that start with the same tokens (a chat's next turn starts with the whole conversation so far).

Entries are whole sequences (prompt and reply), matched by their longest common prefix with a new
prompt; memory is bounded by a byte budget, evicted least recently used. Lookup compares token ids
as tensors, so it costs microseconds next to the prefill it saves.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import torch

from ..metrics import Metrics


@dataclass
class PrefixEntry:
    ids: torch.Tensor  # [tokens] int64
    keys: list[torch.Tensor]  # per layer: [kv_heads, tokens, head_dim]
    values: list[torch.Tensor]
    nbytes: int

    def __len__(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class PrefixHit:
    entry: PrefixEntry
    length: int  # tokens of the new prompt whose keys and values the entry holds


def common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.shape[0], b.shape[0])
    differ = (a[:n] != b[:n]).nonzero()
    return int(differ[0, 0]) if differ.numel() else n


class PrefixCache:
    def __init__(self, budget_bytes: int, *, min_tokens: int = 16, metrics: Metrics | None = None) -> None:
        self.budget = budget_bytes
        self.min_tokens = min_tokens  # shorter matches are not worth a separate prefill path
        self.metrics = metrics
        self._entries: collections.OrderedDict[int, PrefixEntry] = collections.OrderedDict()
        self._next = 0
        self.nbytes = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, prompt_ids: list[int]) -> PrefixHit | None:
        """The entry sharing the longest prefix with the prompt. At least the prompt's last token is left
        out, since prefill must run on something to give the next token's logits."""
        if not self._entries:
            self._count(len(prompt_ids), 0)
            return None
        ids = torch.tensor(prompt_ids, dtype=torch.long)
        best_key, best = -1, 0
        for key, entry in self._entries.items():
            length = common_prefix(entry.ids, ids)
            if length > best:
                best_key, best = key, length
        best = min(best, len(prompt_ids) - 1)
        if best < self.min_tokens:
            self._count(len(prompt_ids), 0)
            return None
        self._entries.move_to_end(best_key)
        self._count(len(prompt_ids), best)
        return PrefixHit(self._entries[best_key], best)

    def store(self, ids: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep a finished sequence's cache (tensors the caller no longer uses)."""
        nbytes = sum(t.numel() * t.element_size() for t in (*keys, *values))
        if len(ids) < self.min_tokens or nbytes > self.budget:
            return
        entry = PrefixEntry(torch.tensor(ids, dtype=torch.long), keys, values, nbytes)
        # An entry the new one extends can never be the better match again.
        for key in [k for k, e in self._entries.items() if common_prefix(e.ids, entry.ids) == len(e)]:
            self._drop(key)
        self._entries[self._next] = entry
        self._next += 1
        self.nbytes += nbytes
        while self.nbytes > self.budget:
            self._drop(next(iter(self._entries)))
        self._gauge()

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0
        self._gauge()

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes

    def _count(self, queried: int, hit: int) -> None:
        if self.metrics is not None:
            self.metrics.prefix_cache_queries.inc(queried)
            self.metrics.prefix_cache_hits.inc(hit)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.prefix_cache_bytes.set(self.nbytes)
