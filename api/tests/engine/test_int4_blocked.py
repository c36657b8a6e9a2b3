"""piBLOOM's 4-bit kernel over weights re-blocked as inductor's AMX GEMM lays them out
(`int4_blocked`): torch's int4 product bit for bit from the other layout, the layout inductor's, and a
row's result independent of the rows around it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pibloom.engine import int4_blocked, quantize

GROUP = quantize.GROUP


@pytest.fixture(scope="module", autouse=True)
def kernel(tmp_path_factory: pytest.TempPathFactory) -> None:
    why_not = int4_blocked.unavailable()
    if why_not is not None:
        pytest.skip(f"no build of the kernel here: {why_not}")
    int4_blocked.load(tmp_path_factory.mktemp("kernels"))


def weights(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Levels [N, K], torch's packed weight and the scales and zeros of a random bfloat16 matrix."""
    torch.manual_seed(seed)
    levels, scales_zeros = quantize.quantize_int4((torch.randn(n, k) * 0.05).to(torch.bfloat16))
    return levels, quantize.pack(levels), scales_zeros


def blocked(levels: torch.Tensor) -> torch.Tensor:
    """The layout the kernel reads, from the levels: [N/32, K, 16] bytes, column j of a block of 32 in
    the low nibble and j + 16 in the high one (viewed [N, K/2], as torch's packed weight is)."""
    n, k = levels.shape
    blocks = levels.to(torch.uint8).reshape(n // 32, 2, 16, k).permute(0, 3, 1, 2)  # [N/32, K, 2, 16]
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).contiguous().view(n, k // 2)


def dequantized(levels: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    scale = scales_zeros[:, :, 0].double().t().repeat_interleave(GROUP, dim=1)
    zero = scales_zeros[:, :, 1].double().t().repeat_interleave(GROUP, dim=1)
    return (levels.double() - 8) * scale + zero


@pytest.mark.parametrize(("n", "k"), [(64, 64), (96, 128), (576, 1536), (960, 576)])
def test_it_computes_torch_s_int4_product_bit_for_bit_from_the_re_blocked_weights(n: int, k: int) -> None:
    """The same sums in the same order as torch's kernel: swapping one for the other changes no logit,
    so no greedy token (a near-tie included), and both are as close to the exact product as bfloat16
    allows."""
    levels, packed, scales_zeros = weights(n, k)
    reblocked = blocked(levels)
    assert reblocked.shape == packed.shape and reblocked.dtype == torch.uint8
    exact_weights = dequantized(levels, scales_zeros)
    for rows in (1, 2, 3, 5, 33):
        x = torch.randn(rows, k).to(torch.bfloat16)
        got = int4_blocked.matmul(x, reblocked, scales_zeros, GROUP)
        assert got.shape == (rows, n) and got.dtype == torch.bfloat16
        assert torch.equal(got, torch._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_zeros))
        exact = x.double() @ exact_weights.t()
        assert ((got.double() - exact).abs() <= exact.abs().clamp(min=1e-2) * 2**-7).all()


def test_the_layout_is_the_one_inductor_re_blocks_into() -> None:
    """The many-row decode graph's weights are inductor's re-blocking of torch's packed weight: the
    kernel must read exactly that layout for the lean pass to take those weights."""
    import torch._inductor.kernel.mm  # the template module, imported first, would meet an import cycle
    from torch._inductor.codegen.cpp_gemm_template import CppWoqInt4GemmTemplate

    levels, packed, scales_zeros = weights(128, 96)
    inductors = CppWoqInt4GemmTemplate[GROUP].block_weight(packed, None, None)  # type: ignore[index]
    assert torch.equal(blocked(levels), inductors)
    x = torch.randn(3, 96).to(torch.bfloat16)
    assert torch.equal(
        int4_blocked.matmul(x, inductors, scales_zeros, GROUP),
        torch._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_zeros),
    )


def test_a_row_gets_the_same_result_alone_and_in_a_batch() -> None:
    levels, _, scales_zeros = weights(192, 128, seed=3)
    reblocked = blocked(levels)
    x = torch.randn(7, 128).to(torch.bfloat16)
    together = int4_blocked.matmul(x, reblocked, scales_zeros, GROUP)
    for row in range(7):
        alone = int4_blocked.matmul(x[row : row + 1], reblocked, scales_zeros, GROUP)
        assert torch.equal(alone, together[row : row + 1])


def test_an_adopted_layer_computes_through_the_kernel() -> None:
    levels, packed, scales_zeros = weights(64, 64, seed=5)
    layer = quantize.Int4Linear(packed, scales_zeros, torch.randn(64).to(torch.bfloat16))
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    before = layer(x)
    owner = object()
    layer.adopt(blocked(levels), scales_zeros.clone(), owner)
    after = layer(x)
    assert layer.blocked and torch.equal(after, before)


def test_a_build_is_reused_and_named_by_its_source(tmp_path: Path) -> None:
    from pibloom.engine import toolchain

    flags = toolchain.library_flags([])
    path = toolchain.library_path(tmp_path, "int4_blocked", int4_blocked.SOURCE, flags)
    assert path.name.startswith("int4_blocked-") and path.parent == tmp_path
