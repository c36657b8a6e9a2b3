"""4-bit weights: exact on weights that are already 4-bit, bounded error otherwise, and the engine's
output stays equal to transformers' `generate` on the same quantised model."""

from __future__ import annotations

import json
import platform
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType, GGUFWriter
from torch import nn

from pibloom.engine import loader
from pibloom.engine.llama_forward import _projection
from pibloom.engine.loader import LoadedModel, ModelSource, load_model, small_steps_int4
from pibloom.engine.quantize import GROUP, Int4Linear, four_bit_gguf, quantize_fused, quantize_int4, vectorised
from pibloom.settings import Settings

from generation import PROMPTS, engine_greedy, ids, reference


def q4_1_weight(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    """A weight as a Q4_1 GGUF stores it: per 32 weights, levels 0..15 times a scale plus a minimum,
    with the quantiser's choice of scale = (max - min) / 15, so levels 0 and 15 both occur."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 16, (rows, columns // GROUP, GROUP), generator=g)
    levels[..., 0], levels[..., 1] = 0, 15
    scale = torch.rand(rows, columns // GROUP, 1, generator=g) * 0.05 + 0.01
    minimum = torch.randn(rows, columns // GROUP, 1, generator=g) * 0.1
    return (levels * scale + minimum).reshape(rows, columns)


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def test_weights_already_on_a_4_bit_grid_come_back_exactly() -> None:
    weight = q4_1_weight(128, 256)
    x = torch.randn(5, 256)
    quantised = Int4Linear.from_linear(linear(weight))
    assert torch.allclose(quantised(x), x @ weight.T, atol=1e-4)


def test_rounding_error_is_at_most_half_a_level() -> None:
    weight = torch.randn(64, 128)
    levels, scales_zeros = quantize_int4(weight)
    scale = scales_zeros[..., 0].T.repeat_interleave(GROUP, dim=1)
    zero = scales_zeros[..., 1].T.repeat_interleave(GROUP, dim=1)
    restored = (levels - 8) * scale + zero
    assert ((restored - weight).abs() <= scale / 2 + 1e-6).all()
    # And the kernel computes with exactly those values.
    x = torch.randn(3, 128)
    assert torch.allclose(Int4Linear.from_linear(linear(weight))(x), x @ restored.T, atol=1e-4)


def test_a_row_gets_the_same_result_alone_and_in_a_batch() -> None:
    layer = Int4Linear.from_linear(linear(torch.randn(192, 128), torch.randn(192)))
    x = torch.randn(32, 128).bfloat16()
    layer = layer.to(torch.bfloat16)
    together = layer(x)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(32)])
    assert torch.equal(together, alone)


@pytest.fixture(scope="module", params=["bloom", "llama"])
def int4_model(request: pytest.FixtureRequest) -> LoadedModel:
    settings: Settings = request.getfixturevalue("tiny_settings" if request.param == "bloom" else "tiny_llama_settings")
    loaded = load_model(settings.model_copy(update={"quantize": "int4"}))
    assert loaded.int4
    quantised = [m for m in loaded.model.modules() if isinstance(m, Int4Linear)]
    dense = [m for m in loaded.model.modules() if isinstance(m, nn.Linear)]
    assert quantised and dense == [loaded.model.get_output_embeddings()]  # everything but the output layer
    return loaded


async def test_int4_greedy_output_matches_generate_and_is_batch_invariant(int4_model: LoadedModel) -> None:
    assert await engine_greedy(int4_model) == [reference(int4_model, ids(int4_model, p), 20) for p in PROMPTS]


def test_dense_by_default_and_int4_only_on_the_cpu(tiny_llama: LoadedModel, tiny_llama_settings: Settings) -> None:
    from pibloom.engine.loader import ModelLoadError, wants_int4

    assert not tiny_llama.int4
    int4 = tiny_llama_settings.model_copy(update={"quantize": "int4"})
    assert wants_int4(int4, torch.device("cpu"))
    assert not wants_int4(tiny_llama_settings, torch.device("cuda"))
    with pytest.raises(ModelLoadError, match="needs the CPU"):
        wants_int4(int4, torch.device("cuda"))


def test_small_steps_run_on_4_bit_weights_and_larger_ones_on_the_dense_weights() -> None:
    owner = nn.Module()
    owner.a, owner.b = linear(torch.randn(64, 96)), linear(torch.randn(32, 96))
    dense = torch.cat([owner.a.weight.detach(), owner.b.weight.detach()])
    four_bit = quantize_fused([owner.a, owner.b], None)
    projection, int4 = _projection(owner, ["a", "b"], int4=False, int4_tokens=2)
    assert int4 is not None and torch.equal(int4.packed, four_bit.packed)  # what the compiled step uses
    small, large = torch.randn(1, 2, 96), torch.randn(3, 1, 96)
    assert torch.equal(projection(small), four_bit(small))
    assert torch.equal(projection(large), F.linear(large, dense))
    assert not torch.allclose(four_bit(large), F.linear(large, dense), atol=1e-3)  # they do differ
    # The model's own layers stay dense (views of the fused matrix), so nothing else changes.
    assert isinstance(owner.a, nn.Linear) and torch.equal(owner.a.weight, dense[:64])


async def test_steps_on_the_4_bit_copies_compute_what_the_4_bit_model_does(
    tiny_llama_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "small_steps_int4", lambda *_: 10_000)  # every step, prompts too
    both = load_model(tiny_llama_settings)
    assert both.int4_rows == 10_000 and not both.int4
    assert not [m for m in both.model.modules() if isinstance(m, Int4Linear)]
    four_bit = load_model(tiny_llama_settings.model_copy(update={"quantize": "int4"}))
    assert await engine_greedy(both) == [reference(four_bit, ids(both, p), 20) for p in PROMPTS]


def write_gguf(path: Path, block_type: GGMLQuantizationType) -> Path:
    """A GGUF's tensor table as llama.cpp writes it: 64-column block matrices in `block_type`, a
    float32 norm and a Q8_0 embedding (as the embedded model has)."""
    writer = GGUFWriter(path, "llama")
    if block_type == GGMLQuantizationType.F16:
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 64), np.float16))
    else:
        block_bytes = {GGMLQuantizationType.Q4_0: 18, GGMLQuantizationType.Q4_1: 20}[block_type]
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 2 * block_bytes), np.uint8), raw_dtype=block_type)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    writer.add_tensor("token_embd.weight", np.zeros((16, 2 * 34), np.uint8), raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_auto_keeps_4_bit_copies_only_of_4_bit_gguf_weights_served_in_bfloat16_on_the_cpu(
    tmp_path: Path, tiny_llama_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    for name, kind in [("q4_1", GGMLQuantizationType.Q4_1), ("q4_0", GGMLQuantizationType.Q4_0)]:
        assert four_bit_gguf(write_gguf(tmp_path / f"{name}.gguf", kind))
    assert not four_bit_gguf(write_gguf(tmp_path / "f16.gguf", GGMLQuantizationType.F16))
    settings, cpu, bf16 = tiny_llama_settings, torch.device("cpu"), torch.bfloat16
    gguf = ModelSource("gguf", str(tmp_path), "q4_1.gguf", "q4_1")
    assert settings.quantize == "auto"
    assert small_steps_int4(settings, gguf, cpu, bf16) == loader.INT4_ROWS[bf16] == 8
    assert small_steps_int4(settings.model_copy(update={"int4_max_rows": 3}), gguf, cpu, bf16) == 3
    # Not where it would be less faithful than the dense path, nor where it cannot run (or only slowly:
    # float32 on x86, whose torch has a scalar loop for it).
    assert small_steps_int4(settings, gguf, cpu, torch.float32) == 0
    assert small_steps_int4(settings, gguf, cpu, torch.float16) == 0
    assert small_steps_int4(settings, replace(gguf, gguf_file="f16.gguf"), cpu, bf16) == 0
    assert small_steps_int4(settings, ModelSource("folder", str(tmp_path), None, "hf"), cpu, bf16) == 0
    assert small_steps_int4(settings, gguf, torch.device("cuda"), bf16) == 0
    for mode in ("none", "int4"):
        assert small_steps_int4(settings.model_copy(update={"quantize": mode}), gguf, cpu, bf16) == 0


def test_the_kernels_count_as_vectorised_for_bfloat16_anywhere_and_float32_only_on_arm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for machine, float32 in [("x86_64", False), ("AMD64", False), ("aarch64", True), ("arm64", True)]:
        monkeypatch.setattr(platform, "machine", lambda machine=machine: machine)
        assert vectorised(cpu, torch.bfloat16)
        assert vectorised(cpu, torch.float32) == float32
        assert not vectorised(cpu, torch.float16)
        assert not vectorised(cuda, torch.bfloat16) and not vectorised(cuda, torch.float32)


def test_on_arm_auto_serves_small_float32_steps_from_4_bit_copies_of_4_bit_gguf_weights(
    tmp_path: Path, tiny_llama_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Raspberry Pi has no bfloat16: it serves float32, where the 4-bit copies are exact, so `auto` uses
    them for small steps there too (fewer of them than in bfloat16 by default)."""
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    gguf = ModelSource("gguf", str(tmp_path), "q4_1.gguf", "q4_1")
    write_gguf(tmp_path / "q4_1.gguf", GGMLQuantizationType.Q4_1)
    write_gguf(tmp_path / "f16.gguf", GGMLQuantizationType.F16)
    settings, cpu = tiny_llama_settings, torch.device("cpu")
    assert settings.int4_max_rows is None
    assert small_steps_int4(settings, gguf, cpu, torch.float32) == loader.INT4_ROWS[torch.float32] == 4
    assert small_steps_int4(settings, gguf, cpu, torch.bfloat16) == loader.INT4_ROWS[torch.bfloat16] == 8
    assert small_steps_int4(settings.model_copy(update={"int4_max_rows": 2}), gguf, cpu, torch.float32) == 2
    assert small_steps_int4(settings, replace(gguf, gguf_file="f16.gguf"), cpu, torch.float32) == 0
    assert small_steps_int4(settings.model_copy(update={"quantize": "none"}), gguf, cpu, torch.float32) == 0


def test_float32_4_bit_copies_of_a_4_bit_grid_are_exact_to_float32_rounding() -> None:
    """In float32 the kernel's scales and zeros are float32: no rounding of them, unlike bfloat16's."""
    weight = q4_1_weight(192, 256, seed=3)
    x = torch.randn(4, 256)
    four_bit = Int4Linear.from_linear(linear(weight))
    assert four_bit.scales_zeros.dtype == torch.float32
    assert torch.allclose(four_bit(x), x @ weight.T, rtol=1e-5, atol=1e-5)
    in_bf16 = Int4Linear.from_linear(linear(weight).to(torch.bfloat16))
    assert not torch.allclose(in_bf16(x.bfloat16()).float(), x @ weight.T, rtol=1e-5, atol=1e-5)


def test_whether_a_gguf_is_4_bit_is_read_once_and_kept_in_its_converted_folder(tmp_path: Path) -> None:
    """A server start reads the answer from the cache, not the GGUF (whose reader costs every worker
    memory): with the GGUF gone, the kept answer still stands."""
    write_gguf(tmp_path / "q4_1.gguf", GGMLQuantizationType.Q4_1)
    gguf = ModelSource("gguf", str(tmp_path), "q4_1.gguf", "q4_1")
    converted = tmp_path / "converted"
    converted.mkdir()
    assert loader.four_bit_source(gguf, converted)
    assert json.loads((converted / loader.FOUR_BIT_MEMO).read_text()) == {"four_bit": True}
    (tmp_path / "q4_1.gguf").unlink()
    assert loader.four_bit_source(gguf, converted)
    with pytest.raises(FileNotFoundError):
        loader.four_bit_source(gguf, None)  # nowhere to keep it: read every time
