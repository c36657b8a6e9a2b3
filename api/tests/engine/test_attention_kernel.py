"""piBLOOM's decode attention computes what torch's attention computes, on the engine's cache views."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_compiled_decode import eager
from test_llama_forward import lean_logits_stepwise, padded_batch

from pibloom.engine import attention_kernel, loader, toolchain
from pibloom.engine.loader import LoadedModel, load_model
from pibloom.settings import Settings

# (rows, columns, heads, key heads, head size): SmolLM2-135M's shape, a tiny model's, no grouping,
# grouping by eight, one column, a column count that is not a multiple of the vector width.
SHAPES = [(32, 200, 9, 3, 64), (5, 17, 4, 2, 16), (3, 40, 4, 4, 32), (3, 33, 32, 4, 128), (4, 1, 9, 3, 64)]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    why_not = attention_kernel.unavailable()
    if why_not is not None:
        pytest.skip(f"piBLOOM's attention kernel is not built on this machine: {why_not}")
    return tmp_path_factory.mktemp("kernels")


def _inputs(
    rows: int, columns: int, heads: int, kv_heads: int, size: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """Queries, and keys and values as the slot cache hands them out: views of the first `columns` of
    larger buffers. Row r is left-padded by `starts[r]` columns; row 0 also has a masked column inside,
    row 1 a masked run longer than the kernel's chunk."""
    generator = torch.Generator().manual_seed(rows * 1000 + columns)
    query = torch.randn(rows, heads, size, generator=generator).to(dtype)
    keys = torch.randn(rows + 2, kv_heads, columns + 9, size, generator=generator).to(dtype)[:rows, :, :columns]
    values = torch.randn(rows + 2, kv_heads, columns + 9, size, generator=generator).to(dtype)[:rows, :, :columns]
    starts = [(row * 7) % max(1, columns // 2) for row in range(rows)]
    bias = torch.zeros(rows, columns)
    for row, start in enumerate(starts):
        bias[row, :start] = float("-inf")
    if columns > 5:
        bias[0, columns - 3] = float("-inf")
    if columns > 150:
        bias[1, 70:140] = float("-inf")  # a whole chunk of 64 columns (from row 1's first, 7) masked
    return query, keys, values, bias, starts


def _torch(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    scale = query.shape[-1] ** -0.5
    out = F.scaled_dot_product_attention(
        query[:, :, None], keys, values, attn_mask=bias[:, None, None].to(query.dtype), scale=scale, enable_gqa=True
    )
    return out[:, :, 0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_float64_attention_as_closely_as_torch(
    build_dir: Path, shape: tuple[int, int, int, int, int], dtype: torch.dtype
) -> None:
    """Against float64 attention: float32 within 2e-6; bfloat16 within twice torch's own error (both
    accumulate in float and round the result to bfloat16)."""
    _, _, heads, kv_heads, size = shape
    kernel = attention_kernel.load(build_dir, size, heads // kv_heads)
    query, keys, values, bias, _ = _inputs(*shape, dtype)
    out = kernel(query, keys, values, bias, size**-0.5)
    assert out.shape == query.shape and out.dtype == dtype
    exact = _torch(query.double(), keys.double(), values.double(), bias.double())
    error = (out.double() - exact).abs().max().item()
    if dtype == torch.float32:
        assert error < 2e-6
    else:
        assert error <= 2 * (_torch(query, keys, values, bias).double() - exact).abs().max().item() + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_row_alone_equals_the_row_padded_in_a_batch_bit_for_bit(build_dir: Path, dtype: torch.dtype) -> None:
    """A row's padding is neither read nor summed, and its sums run from its first column in chunks cut
    from there: what a row gets does not depend on the rows around it (nor on the columns the batch
    has, which set how many chunks there are)."""
    _, _, heads, kv_heads, size = SHAPES[0]
    kernel = attention_kernel.load(build_dir, size, heads // kv_heads)
    query, keys, values, bias, starts = _inputs(*SHAPES[0], dtype)
    batch = kernel(query, keys, values, bias, size**-0.5)
    for row, start in enumerate(starts):
        alone = kernel(
            query[row : row + 1],
            keys[row : row + 1, :, start:],
            values[row : row + 1, :, start:],
            bias[row : row + 1, start:].contiguous(),
            size**-0.5,
        )
        assert torch.equal(alone[0], batch[row])


def test_a_shape_it_was_not_built_for_is_refused(build_dir: Path) -> None:
    kernel = attention_kernel.load(build_dir, 16, 2)
    query, keys, values, bias, _ = _inputs(2, 8, 9, 3, 64, torch.float32)
    with pytest.raises(RuntimeError, match="built for head size 16 and 2 queries per key head"):
        kernel(query, keys, values, bias, 0.125)


def test_builds_are_kept_per_shape_and_reused(build_dir: Path) -> None:
    """One library per head size and group, named by source, flags and torch: a second load (another
    process, a restart) finds it instead of compiling."""
    attention_kernel.load(build_dir, 32, 1)
    built = attention_kernel.library_path(build_dir, 32, 1)
    assert built.exists()
    assert built != attention_kernel.library_path(build_dir, 32, 2)
    assert not list(build_dir.glob("*.tmp"))


def test_a_build_for_another_cpu_is_not_reused(build_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Built with -march=native: a cache directory that moves to a CPU with other extensions (a volume,
    a checkout on another machine) gets a build of its own rather than one that stops on an illegal
    instruction."""
    here = attention_kernel.library_path(build_dir, 64, 3)
    monkeypatch.setattr(toolchain, "_cpu_features", lambda: "flags : fpu sse2 avx2")
    assert attention_kernel.library_path(build_dir, 64, 3) != here


def test_a_failed_build_raises_with_the_compiler_s_output(
    build_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken-c++"
    broken.write_text("#!/bin/sh\necho 'no such header' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    with pytest.raises(RuntimeError, match="exited 3: no such header"):
        attention_kernel.load(tmp_path / "kernels", 48, 5)
    assert not list((tmp_path / "kernels").glob("*"))  # no partial library left behind


def test_the_loader_gives_the_lean_pass_the_kernel_and_it_decodes_as_torch_does(
    build_dir: Path, tiny_llama: LoadedModel
) -> None:
    """Rows of different lengths decoded step by step on the slot cache: logits within 1e-5 of the same
    pass on torch's attention, same greedy tokens."""
    lean = tiny_llama.forward
    assert lean.attention_kernel is not None  # type: ignore[attr-defined]
    on_torch = eager(tiny_llama).forward
    on_torch.attention_kernel = None  # type: ignore[attr-defined]
    ids, mask = padded_batch(tiny_llama.model.config.vocab_size, [12, 5, 9, 3])
    ours = lean_logits_stepwise(lean, ids, mask, prefill=4)  # type: ignore[arg-type]
    theirs = lean_logits_stepwise(on_torch, ids, mask, prefill=4)  # type: ignore[arg-type]
    valid = mask.bool()
    assert (ours - theirs)[valid].abs().max().item() < 1e-5
    assert torch.equal(ours[valid].argmax(-1), theirs[valid].argmax(-1))


def test_the_setting_and_a_failed_build_leave_torch_s_attention(
    build_dir: Path,
    tiny_llama_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    off = load_model(tiny_llama_settings.model_copy(update={"attention_kernel": False}))
    assert off.forward.attention_kernel is None  # type: ignore[attr-defined]

    def broken(*args: object) -> None:
        raise RuntimeError("the compiler is broken")

    monkeypatch.setattr(attention_kernel, "load", broken)
    with caplog.at_level("WARNING", logger=loader.log.name):
        loaded = load_model(tiny_llama_settings)
    assert loaded.forward.attention_kernel is None  # type: ignore[attr-defined]
    assert "building piBLOOM's failed: the compiler is broken" in caplog.text
