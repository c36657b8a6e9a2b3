"""The output layer ranked in 8 bits and rescored exactly: the dense path's candidates, values and greedy
tokens for small steps, the dense layer itself for larger ones, and only where it is meant to run."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pibloom.engine.loader import load_model, rescored_head_rows
from pibloom.engine.output_head import RESCORED, RescoredHead, quantize_int8_rows, supported
from pibloom.settings import Settings

from generation import engine_greedy

BF16_ULP = 2**-7  # bfloat16's relative rounding step


def head(vocab: int = 1000, hidden: int = 64, bias: bool = False, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(hidden, vocab, bias=bias).to(torch.bfloat16)


def test_int8_levels_times_scales_are_within_half_a_level_of_each_weight() -> None:
    weight = head().weight
    levels, scales = quantize_int8_rows(weight)
    assert levels.dtype == torch.int8 and int(levels.abs().max()) == 127
    error = (levels.float() * scales.float()[:, None] - weight.float()).abs()
    assert bool((error <= scales.float()[:, None] / 2 * (1 + BF16_ULP)).all())


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_small_steps_get_the_dense_argmax_and_exact_logits_for_the_candidates(bias: bool, dtype: torch.dtype) -> None:
    linear = head(bias=bias).to(dtype)
    rescored = RescoredHead(linear, rows=4)
    for rows in (1, 2, 4):
        x = torch.randn(rows, 1, 64).to(dtype)
        dense = F.linear(x, linear.weight, linear.bias).float()
        got = rescored(x).float()
        assert got.shape == dense.shape
        # The dense path's own top tokens are among the candidates, scored as it scores them.
        top = dense.topk(8, dim=-1).indices
        assert torch.allclose(got.gather(-1, top), dense.gather(-1, top), rtol=BF16_ULP, atol=1e-3)
        picked = got.argmax(-1, keepdim=True)
        assert torch.allclose(dense.gather(-1, picked), dense.amax(-1, keepdim=True), rtol=BF16_ULP, atol=1e-3)
        # The rest are the 8-bit product: close, and not the dense values (else nothing was saved).
        assert torch.allclose(got, dense, atol=0.05)
        assert not torch.equal(got, dense)


@pytest.mark.parametrize("bias", [False, True])
def test_argmax_only_steps_rank_in_4_bits_and_keep_the_dense_winner_and_its_rivals_exact(bias: bool) -> None:
    linear = head(vocab=1024, bias=bias)  # 4-bit rows come in blocks of 16
    rescored = RescoredHead(linear, rows=4)
    assert rescored.int4 is not None and rescored.int4.packed.dtype == torch.uint8
    for rows in (1, 2, 4):
        x = torch.randn(rows, 1, 64).to(torch.bfloat16)
        dense = F.linear(x, linear.weight, linear.bias).float()
        got = rescored(x, argmax_only=True).float()
        assert torch.equal(got.argmax(-1), dense.argmax(-1))
        top = dense.topk(8, dim=-1).indices
        assert torch.allclose(got.gather(-1, top), dense.gather(-1, top), rtol=BF16_ULP, atol=1e-3)
        # The rest come from the 4-bit ranking, not the 8-bit one: coarser, and not what sampling reads.
        eight = rescored(x).float()
        assert not torch.equal(got, eight)
        assert (got - dense).abs().max() > (eight - dense).abs().max()


def test_a_row_gets_the_same_logits_alone_and_in_a_batch() -> None:
    rescored = RescoredHead(head(), rows=4)
    x = torch.randn(4, 1, 64).to(torch.bfloat16)
    for argmax_only in (False, True):
        together = rescored(x, argmax_only)
        assert all(torch.equal(rescored(x[i : i + 1], argmax_only), together[i : i + 1]) for i in range(4))


def test_larger_steps_and_other_dtypes_use_the_dense_layer() -> None:
    linear = head()
    rescored = RescoredHead(linear, rows=2)
    assert rescored.weight is linear.weight  # shared (often the tied embedding), not copied
    large = torch.randn(3, 1, 64).to(torch.bfloat16)
    assert torch.equal(rescored(large), F.linear(large, linear.weight))
    assert torch.equal(rescored(large, argmax_only=True), F.linear(large, linear.weight))  # not ranked in 4 bits
    prompt = torch.randn(1, 3, 64).to(torch.bfloat16)  # three positions of one row count as three
    assert torch.equal(rescored(prompt), F.linear(prompt, linear.weight))


def test_only_cpu_layers_of_a_dtype_and_shape_the_kernel_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert supported(head())
    assert not supported(head().float())  # x86 builds run the 8-bit kernel in float32 as a scalar loop
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert supported(head().float())  # their NEON version takes float32 (a Pi serves float32)
    assert not supported(head().half())
    assert not supported(head(hidden=40))  # the kernel needs hidden sizes in multiples of 16
    assert not supported(head(vocab=RESCORED))  # nothing to save: every token would be rescored
    assert not supported(nn.Embedding(1000, 64).to(torch.bfloat16))


def test_on_by_default_with_quantize_auto_or_int4_and_off_with_none_or_zero_rows(tiny_llama_settings: Settings) -> None:
    class Model:
        def __init__(self, layer: nn.Module) -> None:
            self.layer = layer

        def get_output_embeddings(self) -> nn.Module:
            return self.layer

    settings, model = tiny_llama_settings, Model(head())
    assert settings.quantize == "auto" and rescored_head_rows(settings, model) == settings.head_int8_max_rows == 4
    assert rescored_head_rows(settings.model_copy(update={"quantize": "int4"}), model) == 4
    assert rescored_head_rows(settings.model_copy(update={"quantize": "none"}), model) == 0
    assert rescored_head_rows(settings.model_copy(update={"head_int8_max_rows": 0}), model) == 0
    assert rescored_head_rows(settings, Model(head().float())) == 0


@pytest.mark.parametrize("model", ["llama", "bloom"])  # the lean pass, and transformers' forward
async def test_served_bfloat16_model_decodes_as_with_the_dense_output_layer(
    model: str, request: pytest.FixtureRequest
) -> None:
    settings: Settings = request.getfixturevalue("tiny_llama_settings" if model == "llama" else "tiny_settings")
    bf16 = settings.model_copy(update={"dtype": "bfloat16"})
    rescored = load_model(bf16)
    dense = load_model(bf16.model_copy(update={"head_int8_max_rows": 0}))
    assert isinstance(rescored.model.lm_head, RescoredHead) and rescored.head_int8_rows == 4
    assert isinstance(dense.model.lm_head, nn.Linear) and dense.head_int8_rows == 0
    assert rescored.lean == (model == "llama")
    if rescored.lean:
        assert rescored.forward.head is rescored.model.lm_head  # the lean pass calls it
    # Alone and batched, each against the dense layer in the same batches: in bfloat16 the tiny model's
    # logits tie exactly at times (a gap of 0.0 between the best two), and which of them a step picks
    # then depends on how the batch's matmuls round; batch invariance is tested in float32.
    for batched in (False, True):
        assert await engine_greedy(rescored, batched=batched) == await engine_greedy(dense, batched=batched)


@pytest.mark.parametrize("model", ["llama", "bloom"])
async def test_served_float32_model_on_arm_decodes_as_with_the_dense_output_layer(
    model: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Pi serves float32: there the output layer is ranked in 8 bits too, with the same greedy tokens."""
    settings: Settings = request.getfixturevalue("tiny_llama_settings" if model == "llama" else "tiny_settings")
    assert settings.dtype == "float32"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    dense = load_model(settings)
    assert isinstance(dense.model.lm_head, nn.Linear) and dense.head_int8_rows == 0  # x86: dense in float32
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    rescored = load_model(settings)
    assert isinstance(rescored.model.lm_head, RescoredHead) and rescored.head_int8_rows == 4
    assert rescored.model.lm_head.scales.dtype == torch.float32
    assert await engine_greedy(rescored) == await engine_greedy(dense, batched=False)
