"""One copy of each constant the compiled decode graphs hold.

Inductor's 4-bit AMX GEMM re-blocks each projection's weights when it compiles a graph and keeps the
result as a constant of that graph, stored with the graph in the compiler's cache and loaded from it
anew for every graph. The graphs compiled for each thread count (`compiled_decode`) thus held equal
copies: 64 MB apiece for SmolLM2-135M on an AMX CPU, measured. While `shared()` is active, each
constant a graph is given is swapped for an earlier one of equal contents, and the copy is freed.

This reaches into inductor's `CompiledFxGraphConstants`, a private class: where it is missing or
changed, nothing is shared and the graphs run as they would have (the log says so).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)

# Smaller constants (norms, scales) are not worth hashing at load.
MIN_BYTES = 64 << 10


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


@dataclass
class Sharing:
    """The constants seen while sharing was on, by dtype, shape and a digest of their bytes."""

    seen: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)
    shared: int = 0  # constants swapped for an earlier equal one
    saved_bytes: int = 0

    def canonical(self, value: Any) -> Any:
        """`value`, or the first tensor seen with the same dtype, shape and contents."""
        if (
            type(value) is not torch.Tensor
            or value.layout is not torch.strided
            or value.is_quantized
            or value.device.type != "cpu"
            or not value.is_contiguous()
            or _nbytes(value) < MIN_BYTES
        ):
            return value
        data = value.detach().reshape(-1).view(torch.uint8).numpy()
        key = (value.dtype, tuple(value.shape), hashlib.blake2b(data, digest_size=16).digest())
        first = self.seen.get(key)
        if first is None:
            self.seen[key] = value
            return value
        if first is value or not torch.equal(first, value):  # the same object, or a digest collision
            return value
        self.shared += 1
        self.saved_bytes += _nbytes(value)
        return first


def _unwrapping_classes() -> list[type]:
    """Inductor's classes that hand a loaded graph its constants (`unwrap(graph)`), or none."""
    try:
        from torch._inductor import output_code
    except ImportError:
        return []
    names = ("CompiledFxGraphConstants", "CompiledFxGraphConstantsWithGm")
    classes = [getattr(output_code, name, None) for name in names]
    return [c for c in classes if isinstance(c, type) and callable(c.__dict__.get("unwrap"))]


def _sharing_unwrap(original: Callable[..., Any], sharing: Sharing) -> Callable[..., Any]:
    def unwrap(self: Any, graph: Any) -> Any:
        constants = getattr(graph, "constants", None)
        if isinstance(constants, dict):
            # In the graph's own dict too, so that the duplicate is not kept alive by it.
            for name, value in constants.items():
                constants[name] = sharing.canonical(value)
        return original(self, graph)

    return unwrap


@contextmanager
def shared() -> Iterator[Sharing]:
    """Graphs loaded inside the block share their equal constants; the classes are restored after."""
    sharing = Sharing()
    classes = _unwrapping_classes()
    if not classes:
        log.info("compiled graphs keep their own constants: inductor has no CompiledFxGraphConstants.unwrap")
    originals = {cls: cls.__dict__["unwrap"] for cls in classes}
    for cls, original in originals.items():
        cls.unwrap = _sharing_unwrap(original, sharing)  # type: ignore[attr-defined]
    try:
        yield sharing
    finally:
        for cls, original in originals.items():
            cls.unwrap = original  # type: ignore[attr-defined]
