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

import hashlib
import logging
import os
import platform
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from . import cpu, toolchain

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "decode_attention.cpp"
DTYPES = frozenset({torch.float32, torch.bfloat16})
# at::vec's own implementation for each of torch's CPU capabilities the kernel is built for.
_CAPABILITY_FLAGS = {
    "AVX512": "-DCPU_CAPABILITY_AVX512",
    "AMX": "-DCPU_CAPABILITY_AVX512",
    "AVX2": "-DCPU_CAPABILITY_AVX2",
}

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]

_lock = threading.Lock()
_loaded: dict[tuple[int, int], Kernel] = {}


def unavailable() -> str | None:
    """None when the kernel can be built here; otherwise why not."""
    if not cpu.x86_64():
        return f"the {platform.machine()} architecture (the kernel is built and measured on x86-64 only)"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in _CAPABILITY_FLAGS:
        return f"a CPU without AVX2 (torch reports {capability})"
    return toolchain.missing()


def supports(heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether the kernel can be built for this attention's shape and dtype: a head size of whole
    vectors (of 16 floats with AVX-512), at most 256."""
    return head_dim % 16 == 0 and 0 < head_dim <= 256 and heads % kv_heads == 0 and dtype in DTYPES


def _flags(head_dim: int, group: int) -> list[str]:
    root = toolchain.torch_root()
    return [
        f"-DPIBLOOM_HEAD_SIZE={head_dim}",
        f"-DPIBLOOM_GROUP={group}",
        "-O3",
        "-DNDEBUG",
        "-march=native",  # built where it runs, like inductor's kernels
        "-fopenmp",  # at::parallel_for shares torch's OpenMP team (torch's own libgomp, by the rpath)
        "-std=c++17",
        "-shared",
        "-fPIC",
        _CAPABILITY_FLAGS[torch.backends.cpu.get_cpu_capability()],
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{root / 'include'}",
        f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        f"-L{root / 'lib'}",
        f"-Wl,-rpath,{root / 'lib'}",
    ]


def _cpu_features() -> str:
    """The CPU's instruction set extensions as the kernel sees them: `-march=native` builds for them, so a
    cache directory that moves to another CPU (a volume, a checkout on another machine) must not
    hand it a build that would stop on an illegal instruction."""
    return cpu.flags() or platform.processor()


def library_path(directory: Path, head_dim: int, group: int) -> Path:
    """Where the kernel built for a head size and group lives: named by its source, the flags, the CPU's
    features and torch's version, so a change to any of them builds it anew."""
    flags = _flags(head_dim, group)
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(flags).encode())
    key.update(_cpu_features().encode())
    key.update(torch.__version__.encode())
    return directory / f"decode_attention-{head_dim}-{group}-{key.hexdigest()[:16]}.so"


def _build(target: Path, flags: list[str]) -> None:
    compiler = toolchain.compiler()
    assert compiler is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    command = [compiler, *flags, str(SOURCE), "-o", str(partial), "-ltorch", "-ltorch_cpu", "-lc10"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode:
            raise RuntimeError(f"{compiler} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)  # whole or not at all, for another process building the same
    finally:
        partial.unlink(missing_ok=True)


def load(directory: Path, head_dim: int, group: int) -> Kernel:
    """The kernel for a head size and a group (query heads per key head), built into `directory` unless
    a build of the same source is there already; loaded once per process. Raises what the build raised."""
    with _lock:
        if (head_dim, group) not in _loaded:
            target = library_path(directory, head_dim, group)
            if not target.exists():
                log.info("building the decode attention kernel into %s", target)
                _build(target, _flags(head_dim, group))
            torch.ops.load_library(str(target))
            _loaded[head_dim, group] = getattr(torch.ops.pibloom_kernels, f"decode_attention_{head_dim}_{group}")
        return _loaded[head_dim, group]
