"""How much KV cache the engine may hold: the budget admission keeps to, so that load queues instead
of allocating past the container's memory limit (where the kernel would kill every stream at once);
and handing freed heap, and code that only start-up ran, back to the system, so that neither stays
resident."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import mmap
import sys
from functools import cache
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Without a container limit: the budget when none is set.
DEFAULT_BUDGET = 1 << 30
# Of the memory the container has left once the model is loaded, the share the batch's KV cache may
# use (the rest: prefill activations, the prefix cache's own budget, allocator slack).
LIMIT_SHARE = 0.6
MIN_BUDGET = 32 << 20
# Linux's value on every architecture; Pythons built against older headers lack the constant.
_MADV_PAGEOUT = 21


def kv_bytes_per_token(config: Any, dtype: torch.dtype) -> int:
    """Keys and values of one token across every layer."""
    layers = int(getattr(config, "num_hidden_layers", None) or config.n_layer)
    heads = int(getattr(config, "num_attention_heads", None) or config.n_head)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return layers * 2 * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def container_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup (v2, else v1) memory limit of this process, None where there is none."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(text)
        return None
    return None


@cache
def _libc_function(name: str) -> Any:
    """A function of glibc, None elsewhere (musl, macOS)."""
    with contextlib.suppress(OSError, AttributeError):
        return getattr(ctypes.CDLL("libc.so.6"), name)
    return None


def return_freed(*, collect: bool = False) -> None:
    """Hand the heap pages freed since the last call back to the system: glibc keeps them mapped, so
    what a load or a burst of requests freed (the weights replaced by 4-bit copies, ~200 MB for
    SmolLM2-135M; the grammar warm-up's scratch, 27 MB; prompt activations) stayed resident. With
    `collect`, Python's unreachable cycles are freed first (at load: a full pass over the heap's
    objects takes too long for the engine's loop)."""
    if collect:
        gc.collect()
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def release_code_pages(maps: Path = Path("/proc/self/maps")) -> int:
    """Ask the kernel to reclaim the resident pages of this process's read-only file mappings: the
    shared libraries' code and constants. Most of torch's (~60 MB) ran once, at import, registering
    every operator, and never run again. Clean file pages are dropped, never lost: one needed later is
    read back from the file at its first use. Writable mappings are left alone. Returns the bytes of
    the mappings advised: 0 where the kernel has no MADV_PAGEOUT (Linux before 5.4, other systems)."""
    madvise = _libc_function("madvise")
    if madvise is None or not sys.platform.startswith("linux"):
        return 0
    advice = getattr(mmap, "MADV_PAGEOUT", _MADV_PAGEOUT)
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return 0
    advised = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].startswith("/") or "w" in fields[1]:
            continue  # anonymous, special ([vdso], [stack]) or writable
        start, end = (int(bound, 16) for bound in fields[0].split("-"))
        if madvise(start, end - start, advice) == 0:  # a kernel without it refuses each (EINVAL)
            advised += end - start
    return advised


def resident_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def kv_budget(configured_mb: int | None, prefix_cache_mb: int, limit: int | None, resident: int) -> int:
    """Bytes the batch's KV cache may take: the setting when given, else a share of what the container
    limit leaves after the loaded model and the prefix cache, else `DEFAULT_BUDGET`."""
    if configured_mb is not None:
        return configured_mb << 20
    if limit is None:
        return DEFAULT_BUDGET
    left = int((limit - resident) * LIMIT_SHARE) - (prefix_cache_mb << 20)
    if left < MIN_BUDGET:
        log.warning("the memory limit leaves %d MB for the KV cache; using %d MB", left >> 20, MIN_BUDGET >> 20)
    return max(left, MIN_BUDGET)
