"""The output layer of small decode steps, scored in 8 bits and then exactly where it matters.

A decode step of one stream multiplies one hidden state by the whole output matrix: for SmolLM2-135M
49,152 x 576 weights, 57 MB in bfloat16, a quarter of the step (profiled: 7.8 of ~33 ms); for
BLOOM-560m 250,880 x 1,024, 514 MB. torch's int8 weight kernel reads half of that, but per-row int8
scales cost fidelity on their own (next-token KL against the exact weights 1.4e-3 against bfloat16's
3.7e-4, and 3 of 113 greedy tokens changed, measured on the embedded model). So the 8-bit product
only ranks the vocabulary: its best `RESCORED` candidates are scored again from the dense weights
(bfloat16, or float32 on Arm, where a Pi reads 113 MB for this layer against 28 MB in 8 bits), and
those exact logits replace the approximate ones. The greedy token is then the dense path's
whenever it is among the candidates (113 of 113 measured; the approximation's error is a small
fraction of the gap to the 64th token), and sampling draws from exact logits for every token with
any real probability. Past a few rows the dense matmul is as fast (`rows`).

A step whose every row wants only its most likely token (greedy, with no penalty, bias, grammar or
logprobs: `argmax_only`) ranks in 4 bits instead (groups of 32, as `quantize`): 17 MB read where 8 bits
read 28, and the step's other weights have pushed the head out of the CPU's cache by then, so on 2
cores one row took 0.96 against 2.25 ms, four rows 1.9 against 3.0 (measured). Its logits are
coarser (KL 5.6e-3 against 2.6e-4 in 8 bits), which is why only the winner is taken from them: over
4,737 positions of varied text the exact winner ranked at worst 7th in 4 bits, so among the 64
rescored it is found and the greedy token is the dense path's (4,737 of 4,737 measured).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import quantize

RESCORED = 64  # candidates scored exactly: KL 4.9e-4 at 64, 5.6e-4 at 16, 4.4e-4 at 256 (measured)
_COLUMN_MULTIPLE = 16  # the int8 kernel crashes on hidden sizes that are not a multiple of 16


def supported(head: nn.Module | None) -> bool:
    """A linear output layer on the CPU, in a dtype the kernel is vectorised for there (bfloat16; float32
    on Arm), of a shape the kernel takes."""
    return (
        isinstance(head, nn.Linear)
        and quantize.vectorised(head.weight.device, head.weight.dtype)
        and head.in_features % _COLUMN_MULTIPLE == 0
        and head.out_features > RESCORED
        and hasattr(torch, "_weight_int8pack_mm")
    )


def quantize_int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 levels per output row, and the row scales in the weight's dtype. The levels are
    rounded against the stored (rounded) scale, so levels x scale is the nearest point to the weight."""
    scales = (weight.detach().float().abs().amax(dim=1) / 127).clamp(min=1e-12).to(weight.dtype)
    levels = (weight.detach().float() / scales.float()[:, None]).round().clamp(-127, 127).to(torch.int8)
    return levels, scales


class RescoredHead(nn.Module):
    """Takes the model's output layer's place: inputs of up to `rows` positions are ranked in 8 bits
    (4 for argmax-only steps) and their best candidates rescored exactly; larger ones go through the
    dense layer. The dense weight (often the tied input embedding) stays shared, not copied; the 4-bit
    copy costs a quarter of it.

    Past `rows`, argmax-only steps once ranked through inductor's 4-bit GEMM, compiled beside the decode
    stack. It saved 0.7 ms of a 25 ms step at sixteen rows and nothing at thirty-two (the top-64
    selection and rescoring cost what it saves), for 18 MB of re-blocked weights resident in every
    worker, so the dense product serves those steps."""

    def __init__(self, head: nn.Linear, rows: int) -> None:
        super().__init__()
        self.weight = head.weight
        self.bias = head.bias
        self.rows = rows
        levels, scales = quantize_int8_rows(head.weight)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer("scales", scales, persistent=False)
        self.in_features, self.out_features = head.in_features, head.out_features
        self.int4: quantize.Int4Linear | None = None  # the 4-bit ranking of argmax-only steps
        if quantize.quantizable(head) and quantize.supported(head.weight.device):
            levels4, scales_zeros = quantize.quantize_int4(head.weight)
            self.int4 = quantize.Int4Linear(quantize.pack(levels4), scales_zeros, None)  # bias added below

    def forward(self, h: torch.Tensor, argmax_only: bool = False) -> torch.Tensor:
        """Logits [..., vocab]: the best `RESCORED` of each row exact, the rest as ranked. With
        `argmax_only` they were ranked in 4 bits: fit for taking the largest, not for sampling."""
        flat = h.reshape(-1, h.shape[-1])
        if h.dtype != self.weight.dtype or flat.shape[0] > self.rows:
            return F.linear(h, self.weight, self.bias)
        if argmax_only and self.int4 is not None:
            logits = self.int4(flat)
        else:
            logits = torch._weight_int8pack_mm(flat, self.levels, self.scales)
        top = logits.topk(RESCORED, dim=-1).indices
        exact = torch.bmm(self.weight[top], flat.unsqueeze(-1)).squeeze(-1)
        if self.bias is not None:
            logits = logits + self.bias
            exact = exact + self.bias[top]
        return logits.scatter_(1, top, exact).view(*h.shape[:-1], self.out_features)
