"""piBLOOM's caches (`kv_cache`) as transformers' `Cache`, for models that run through transformers'
forward. Imported only by that path: the lean pass takes piBLOOM's caches as they are, so a worker
serving it never imports transformers."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer


class _Layer(DynamicLayer):  # type: ignore[misc]
    """One of piBLOOM's cache layers behind transformers' layer interface: its `update` and length
    are piBLOOM's; transformers derives mask sizes and offsets from the length, as for its own."""

    def __init__(self, own: Any) -> None:
        super().__init__()
        self.own = own
        self.keys, self.values, self.is_initialized = own.keys, own.values, own.is_initialized

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.own.update(key_states, value_states)
        self.keys, self.values, self.is_initialized = keys, values, True
        return keys, values

    def get_seq_length(self) -> int:
        length: int = self.own.get_seq_length()
        return length


def as_transformers_cache(cache: Any) -> Cache:
    """`cache` (a `SlotCache` or `GrowingCache`) for one call of a transformers model; writes go to it."""
    if isinstance(cache, Cache):
        return cache
    return Cache(layers=[_Layer(layer) for layer in cache.layers])
