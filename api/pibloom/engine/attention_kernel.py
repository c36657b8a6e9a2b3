"""piBLOOM's own decode-step attention (`kernels/decode_attention.cpp`), built with the machine's C++
compiler on first use and kept in the model cache.

torch's fused attention runs one task per row and query head: with grouped-query attention each key
head's keys and values are read once per query head of its group (three times for SmolLM2), and at
one query per row its blocking is mostly overhead. The kernel scores a key head's whole group at
once, sixteen columns per vector, skips a row's left padding, and shares each row's columns out to the
thread team in chunks of 64. A decode step of the embedded model, alternating in one process: 32 rows
at ~70 columns 28.2-28.6 ms against 33.4-33.5 on torch's attention, one row at 2,000 columns 12.2-12.8
against 13.7-14.0 (bfloat16, 2 cores). It follows torch's numerics (float accumulation; within 1e-6 of
float64 in float32, as torch is) and a row's result does not depend on the batch around it, bit for
bit.

Where it cannot be built (no compiler or headers, as in the container images; not x86-64), or for a
shape it was not built for, the pass keeps torch's attention.
"""

from __future__ import annotations

import logging
import platform
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from . import cpu, toolchain

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "decode_attention.cpp"
DTYPES = frozenset({torch.float32, torch.bfloat16})
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]

_lock = threading.Lock()
_loaded: dict[tuple[int, int], Kernel] = {}


def unavailable() -> str | None:
    """None when the kernel can be built here; otherwise why not."""
    if not cpu.x86_64():
        return f"the {platform.machine()} architecture (the kernel is built and measured on x86-64 only)"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in toolchain.CAPABILITY_FLAGS:
        return f"a CPU without AVX2 (torch reports {capability})"
    return toolchain.missing()


def supports(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether the kernel can be built for this attention's shape and dtype: a head size of whole
    vectors (of 16 floats with AVX-512), at most 256."""
    return head_dim % 16 == 0 and 0 < head_dim <= 256 and heads % kv_heads == 0 and dtype in DTYPES


def _flags(head_dim: int, group: int) -> list[str]:
    return toolchain.library_flags([f"-DPIBLOOM_HEAD_SIZE={head_dim}", f"-DPIBLOOM_GROUP={group}"])


def library_path(directory: Path, head_dim: int, group: int) -> Path:
    """Where the kernel built for a head size and group lives (`toolchain.library_path`)."""
    return toolchain.library_path(directory, f"decode_attention-{head_dim}-{group}", SOURCE, _flags(head_dim, group))


def load(directory: Path, head_dim: int, group: int) -> Kernel:
    """The kernel for a head size and a group (query heads per key head), built into `directory` unless
    a build of the same source is there already; loaded once per process. Raises what the build raised."""
    with _lock:
        if (head_dim, group) not in _loaded:
            target = library_path(directory, head_dim, group)
            if not target.exists():
                log.info("building the decode attention kernel into %s", target)
                toolchain.build_library(SOURCE, target, _flags(head_dim, group))
            torch.ops.load_library(str(target))
            _loaded[head_dim, group] = getattr(torch.ops.pibloom_kernels, f"decode_attention_{head_dim}_{group}")
        return _loaded[head_dim, group]
