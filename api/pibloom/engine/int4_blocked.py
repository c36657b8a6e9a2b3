"""4-bit weights in the layout inductor's AMX GEMM re-blocks them into, computed for a few rows by
piBLOOM's kernel (`kernels/int4_blocked.cpp`), so that a worker holds the projections once.

On a CPU with AMX, the many-row decode graph (`decode_packages`) re-blocks every projection's 4-bit
weights for its AMX GEMM and keeps them, while the one-row graph ran torch's int4 kernel over the lean
pass's own copy in torch's layout: the same weights twice, 63 MB each for the embedded model, and
their scales twice (13 MB). The AMX GEMM is no answer at one row (8.5 against 4.3 ms a step, measured:
it unpacks every weight into tiles, whatever the rows). This kernel computes torch's int4 product
from the re-blocked layout, bit for bit, and as fast at one row (110 against 108 us for a layer's four
projections; a one-row step through the package, weights evicted from cache first, 6.0-6.2 against
6.0-6.5 ms), so the lean pass and the one-row graph take the many-row graph's tensors and the lean
pass's copy goes (`decode_packages.load`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

import torch

from . import cpu, toolchain

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "int4_blocked.cpp"

# The C function the one-row package calls for the operator (`kernels/int4_blocked.cpp`), declared to
# inductor through `aot_inductor.custom_ops_to_c_shims`.
C_SHIM = (
    "AOTITorchError aoti_torch_cpu_int4_blocked_mm(AtenTensorHandle x, AtenTensorHandle w, AtenTensorHandle sz,"
    " int64_t group, AtenTensorHandle* out)"
)

_lock = threading.Lock()
_loaded = False


def unavailable() -> str | None:
    """None when the kernel can be built and run here; otherwise why not. It needs AVX-512 with
    bfloat16 conversions, which every CPU with AMX has (the only ones whose GEMM re-blocks)."""
    if not cpu.x86_64():
        return "not an x86-64 CPU"
    if "avx512_bf16" not in cpu.flags().split():
        return "a CPU without AVX-512 bfloat16 instructions"
    return toolchain.missing()


def load(directory: Path) -> None:
    """Build the kernel into `directory` unless a build of the same source is there, and register its
    operator, `torch.ops.pibloom_kernels.int4_blocked_mm`, once per process. Raises what the build raised."""
    global _loaded
    with _lock:
        if _loaded:
            return
        flags = toolchain.library_flags([])
        target = toolchain.library_path(directory, "int4_blocked", SOURCE, flags)
        if not target.exists():
            log.info("building the 4-bit kernel for re-blocked weights into %s", target)
            toolchain.build_library(SOURCE, target, flags)
        # Global, so that a package's direct calls (`C_SHIM`) find the function by name.
        ctypes.CDLL(str(target), mode=os.RTLD_GLOBAL)
        torch.ops.load_library(str(target))
        _loaded = True


def matmul(x: torch.Tensor, blocked: torch.Tensor, scales_zeros: torch.Tensor, group: int) -> torch.Tensor:
    """[M, K] bfloat16 rows times the re-blocked weights: [M, N], as `torch._weight_int4pack_mm_for_cpu`."""
    out: torch.Tensor = torch.ops.pibloom_kernels.int4_blocked_mm(x, blocked, scales_zeros, group)
    return out
