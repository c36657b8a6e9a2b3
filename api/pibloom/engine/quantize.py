"""4-bit weights on the CPU: group-wise asymmetric int4, computed by torch's own int4 matmul kernel.

Decoding one sequence on a CPU reads every weight once per token, so its speed is set by memory
traffic: SmolLM2-135M is 270 MB a token in bfloat16 and ~75 MB in 4 bits. The embedded model ships as
a Q4_1 GGUF (4-bit values with a scale and a minimum per group of 32 weights), which is exactly this
format, so re-quantising its de-quantised weights gives back the file's own 4-bit values: nothing is
lost that the file had not already dropped. Other checkpoints lose what 4-bit rounding loses, which
is why `auto` turns this on only for 4-bit GGUF sources.

The kernel (`torch._weight_int4pack_mm_for_cpu`) computes `x @ ((q - 8) * scale + zero).T` over
groups of `group` input columns, and gives the same row whatever the batch size around it.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP = 32  # Q4_0/Q4_1 blocks are 32 weights: the same groups keep those files' values exact
_ROW_BLOCK = 64  # rows of a packed weight that can be sliced off as a valid packed weight of their own


def supported(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu")


def quantize_int4(weight: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Round each group of `group` weights in a row to 16 levels between its minimum and maximum.
    Returns the packed weight and the [in/group, out, 2] scales-and-zeros the kernel takes."""
    rows, columns = weight.shape
    w = weight.detach().float().reshape(rows, columns // group, group)
    low = w.amin(dim=-1, keepdim=True)
    high = w.amax(dim=-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-8)
    levels = ((w - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(rows, columns)
    zero = low + 8 * scale  # the kernel centres levels on 8: w = (q - 8) * scale + zero
    scales_zeros = torch.cat([scale, zero], dim=-1).permute(1, 0, 2).contiguous()
    return torch._convert_weight_to_int4pack_for_cpu(levels, 1), scales_zeros


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

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, group: int = GROUP) -> Int4Linear:
        packed, scales_zeros = quantize_int4(weight, group)
        return cls(packed, scales_zeros.to(weight.dtype), bias, group)

    def rows(self, start: int, stop: int) -> Int4Linear:
        """Output rows [start, stop) as a layer of their own, sharing the packed weight where the
        packing allows it (row blocks of 64), else re-packed from the same values."""
        bias = None if self.bias is None else self.bias[start:stop]
        scales_zeros = self.scales_zeros[:, start:stop].contiguous()
        if start % _ROW_BLOCK == 0 and (stop % _ROW_BLOCK == 0 or stop == self.out_features):
            return Int4Linear(self.packed[start:stop], scales_zeros, bias, self.group)
        return Int4Linear.from_weight(self.dequantize()[start:stop], bias, self.group)

    def dequantize(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=self.scales_zeros.dtype, device=self.packed.device)
        return torch._weight_int4pack_mm_for_cpu(eye, self.packed, self.group, self.scales_zeros).t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        out = torch._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


def quantizable(linear: nn.Linear, group: int = GROUP) -> bool:
    """The kernel needs whole groups of input columns and whole row blocks of outputs."""
    return linear.in_features % group == 0 and linear.out_features % 16 == 0


def fuse_quantized(
    modules: list[nn.Linear], owner_attrs: list[tuple[nn.Module, str]], bias: torch.Tensor | None
) -> Int4Linear:
    """Quantise the concatenation of `modules` (one matmul for all of them; `bias` is theirs, fused)
    and put views of it in their places, so the model's own forward runs the very same 4-bit weights."""
    weight = torch.cat([m.weight.detach() for m in modules], dim=0)
    fused = Int4Linear.from_weight(weight, bias)
    offset = 0
    for module, (owner, attr) in zip(modules, owner_attrs, strict=True):
        setattr(owner, attr, fused.rows(offset, offset + module.out_features))
        offset += module.out_features
    return fused
