"""The forward pass behind one signature, whichever code computes it.

`forward(input_ids, mask, positions, cache, keep, argmax_only)` returns the logits of the last `keep`
positions (0: all) as [rows, positions, vocab]; with `argmax_only` (the caller takes each row's largest
and nothing else) an implementation may rank the vocabulary coarsely, only the best logits exact. The
loader picks the implementation once per model: piBLOOM's lean pass (`llama_forward`) where it covers
the architecture, transformers' otherwise.
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import torch


class Forward(Protocol):
    name: str

    def __call__(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        keep: int = 1,
        argmax_only: bool = False,
    ) -> torch.Tensor: ...


class TransformersForward:
    name = "transformers'"

    def __init__(self, model: Any) -> None:
        from .transformers_cache import as_transformers_cache  # transformers: only on this path

        self.model = model
        self.as_cache = as_transformers_cache
        self.accepts_position_ids = "position_ids" in inspect.signature(model.forward).parameters

    def __call__(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        keep: int = 1,
        argmax_only: bool = False,  # transformers' forward computes the output layer exactly anyway
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {"attention_mask": mask, "past_key_values": self.as_cache(cache), "use_cache": True}
        if self.accepts_position_ids:
            kwargs["position_ids"] = positions
        # Skipping the vocabulary projection for positions nobody reads saves most of a prefill's work.
        out = self.model(input_ids=input_ids, logits_to_keep=keep, **kwargs)
        logits: torch.Tensor = out.logits
        return logits
