"""4-bit weights on the CPU: group-wise asymmetric int4, computed by torch's own int4 matmul kernel.

Decoding a few sequences on a CPU reads every weight once per step, so its speed is set by memory
traffic: SmolLM2-135M is 270 MB a step in bfloat16 and ~75 MB in 4 bits. The kernel
(`torch._weight_int4pack_mm_for_cpu`) computes `x @ ((q - 8) * scale + zero).T` over groups of 32
input columns and gives a row the same result whatever the batch around it. Re-quantising the
embedded Q4_1 model's de-quantised weights gets the file's own levels back exactly, but the kernel
takes scales and zeros in the activations' dtype (bfloat16), whose rounding moves each group a
little: measured against the exact weights, next-token KL 0.0012 (bfloat16 dense: 0.0009) and 98%
top-1 agreement (dense: 100%). The kernel unpacks the levels at every call, so its cost grows with
the rows while the dense matmul's stays near the weights' traffic: past about twelve rows bfloat16 is
faster. Hence `PIBLOOM_QUANTIZE=auto` (see `four_bit_gguf` and `llama_forward`) uses it for small
decode steps of 4-bit GGUF models only.

On Arm (a Raspberry Pi has no bfloat16, so it serves float32) torch's aarch64 builds carry NEON versions
of this kernel and of the 8-bit one (`output_head`) for float32 activations too; there the scales and
zeros are float32 and the file's levels come back exactly, with no rounding of the scales at all.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch
from torch import nn

from . import int4_blocked

GROUP = 32  # as GGUF's Q4_0/Q4_1 blocks: a Q4_1 file's levels come back exactly


# Machines whose torch builds vectorise the 4- and 8-bit weight kernels for float32 activations (NEON);
# x86 builds vectorise them for bfloat16 only and run float32 through a scalar loop: 1.48 ms against
# 0.08 ms dense for a 1,536 x 576 weight at one row, and 31 against 6.9 ms for the embedded model's
# output layer in 8 bits (measured here).
_FLOAT32_KERNEL_MACHINES = frozenset({"aarch64", "arm64"})


def supported(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu")


def vectorised(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's 4- and 8-bit weight kernels run vectorised for activations of `dtype` here."""
    if not supported(device):
        return False
    arm = platform.machine().lower() in _FLOAT32_KERNEL_MACHINES
    return dtype == torch.bfloat16 or (dtype == torch.float32 and arm)


def quantize_int4(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Round each group of `group` weights in a row to 16 levels between its minimum and maximum.
    Returns the levels ([out, in] int32, 0..15) and the [in/group, out, 2] scales-and-zeros."""
    rows, columns = weight.shape
    w = weight.detach().float().reshape(rows, columns // group, group)
    low = w.amin(dim=-1, keepdim=True)
    high = w.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-8)
    levels = ((w - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(rows, columns)
    zero = low + 8 * scale  # the kernel centres levels on 8: w = (q - 8) * scale + zero
    scales_zeros = torch.cat([scale, zero], dim=-1).permute(1, 0, 2).contiguous()
    return levels, scales_zeros.to(weight.dtype)


def pack(levels: torch.Tensor) -> torch.Tensor:
    return torch._convert_weight_to_int4pack_for_cpu(levels, 1)


class Int4Linear(nn.Module):
    """A bias-optional linear layer over a packed int4 weight; a drop-in for `nn.Linear` in forward."""

    def __init__(
        self, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, group: int = GROUP
    ) -> None:
        super().__init__()
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales_zeros", scales_zeros, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)
        self.group = group
        self.out_features = scales_zeros.shape[1]
        self.in_features = scales_zeros.shape[0] * group
        # What holds `packed` and `scales_zeros` once they are another's (`adopt`); None: this layer.
        self._owner: object | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int4Linear:
        levels, scales_zeros = quantize_int4(linear.weight)
        return cls(pack(levels), scales_zeros, linear.bias)

    @property
    def blocked(self) -> bool:
        """Whether `packed` is laid out for inductor's AMX GEMM (`int4_blocked`) rather than torch's
        kernel: so once the lean pass has taken the many-row decode graph's weights (`adopt`)."""
        return self._owner is not None

    def adopt(self, blocked: torch.Tensor, scales_zeros: torch.Tensor, owner: object) -> None:
        """Compute from now on with these tensors: the same weights, re-blocked (`int4_blocked`), and
        the same scales, held by `owner` (the many-row decode graph, whose memory they are: kept alive
        as long as this layer); this layer's own copies go."""
        self.packed, self.scales_zeros, self._owner = blocked, scales_zeros, owner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        if self.blocked:
            out = int4_blocked.matmul(flat, self.packed, self.scales_zeros, self.group)
        else:
            out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


def quantizable(linear: nn.Module, group: int = GROUP) -> bool:
    """The kernel needs whole groups of input columns and whole row blocks of outputs."""
    return isinstance(linear, nn.Linear) and linear.in_features % group == 0 and linear.out_features % 16 == 0


def quantize_fused(modules: list[nn.Linear], bias: torch.Tensor | None) -> Int4Linear:
    """One 4-bit layer for the concatenation of `modules` (one matmul for all of them; `bias` is
    theirs, fused); the modules themselves are left as they are."""
    levels, scales_zeros = quantize_int4(torch.cat([m.weight.detach() for m in modules], dim=0))
    return Int4Linear(pack(levels), scales_zeros, bias)


def quantize_linears(model: nn.Module) -> int:
    """Replace the model's linear layers (not the output projection) by 4-bit ones, for models that
    run through transformers' own forward. Returns how many were replaced."""
    skip = model.get_output_embeddings()
    targets = [
        (owner, name, child)
        for owner in model.modules()
        for name, child in owner.named_children()
        if child is not skip and quantizable(child)
    ]
    for owner, name, child in targets:
        setattr(owner, name, Int4Linear.from_linear(child))
    return len(targets)


# GGUF block types whose weights are 4-bit levels in groups of 32 with a scale (and a minimum): what
# the kernel computes, so re-quantising their de-quantised weights recovers them.
_FOUR_BIT_GGUF_TYPES = frozenset({"Q4_0", "Q4_1"})


def four_bit_gguf(path: Path) -> bool:
    """Whether every matrix of the GGUF's transformer blocks is stored as Q4_0 or Q4_1 (only the
    tensor table is read)."""
    from gguf import GGUFReader

    blocks = [t for t in GGUFReader(path).tensors if t.name.startswith("blk.") and len(t.shape) == 2]
    return bool(blocks) and all(t.tensor_type.name in _FOUR_BIT_GGUF_TYPES for t in blocks)
