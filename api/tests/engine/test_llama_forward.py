"""piBLOOM's lean forward pass computes what transformers' forward computes, on every cache it meets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, Qwen2Config, Qwen2ForCausalLM

from pibloom.engine.forward import TransformersForward
from pibloom.engine.kv_cache import GrowingCache, SlotCache
from pibloom.engine.llama_forward import (
    LlamaForward,
    _ByTokens,
    _Dense,
    _Packed,
    _PackedPart,
    packing_pays,
    supports,
)
from pibloom.engine.loader import LoadedModel, load_model
from pibloom.settings import Settings

from generation import transformers_twin


def reference_logits(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask, position_ids=positions).logits


def padded_batch(vocab: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), generator=generator)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, width - length :] = 1
        ids[row, : width - length] = 0
    return ids, mask


def lean_logits_stepwise(lean: LlamaForward, ids: torch.Tensor, mask: torch.Tensor, prefill: int) -> torch.Tensor:
    """Prefill the first `prefill` columns as one padded pass, then decode the rest a column at a time
    on the engine's slot cache: every position's logits, to compare with one full forward pass."""
    rows, width = ids.shape
    cache = SlotCache(len(lean.layers), rows)
    cache.set_rows(rows)
    out = []
    with torch.inference_mode():
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out.append(lean(ids[:, :prefill], mask[:, :prefill], positions[:, :prefill], cache, keep=0))
        cache.advance(prefill)
        for column in range(prefill, width):
            step = lean(ids[:, column : column + 1], mask[:, : column + 1], positions[:, column : column + 1], cache)
            cache.advance(1)
            out.append(step)
    return torch.cat(out, dim=1)


# Rows of different lengths decode together: padding and capacity columns are masked.
@pytest.mark.parametrize("lengths", [[12, 7, 12, 3], [12, 7, 12, 3, 9, 11, 6, 12, 4, 10, 8, 12]])
def test_prefill_and_decode_match_transformers(tiny_llama: LoadedModel, lengths: list[int]) -> None:
    model, lean = transformers_twin(tiny_llama.model), tiny_llama.forward
    assert isinstance(lean, LlamaForward)
    ids, mask = padded_batch(model.config.vocab_size, lengths)
    expected = reference_logits(model, ids, mask)
    got = lean_logits_stepwise(lean, ids, mask, prefill=5)
    real = mask.bool()  # padding positions' logits mean nothing in either
    assert torch.allclose(got[real], expected[real], atol=1e-4, rtol=1e-4)
    assert not got.isnan().any()


@pytest.mark.parametrize("kind", ["transformers", "piBLOOM"])
def test_chunked_prefill_on_a_growing_cache_matches_one_pass(tiny_llama: LoadedModel, kind: str) -> None:
    """On transformers' `DynamicCache` and on the engine's own `GrowingCache` (what prefills use)."""
    model, lean = transformers_twin(tiny_llama.model), tiny_llama.forward
    assert isinstance(lean, LlamaForward)
    ids = torch.randint(3, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    expected = reference_logits(model, ids, mask)
    cache = DynamicCache(config=model.config) if kind == "transformers" else GrowingCache(len(lean.layers))
    chunks = []
    with torch.inference_mode():
        for start in range(0, 40, 16):
            end = min(start + 16, 40)
            positions = torch.arange(start, end)[None]
            chunks.append(lean(ids[:, start:end], mask[:, :end], positions, cache, keep=0))
    assert torch.allclose(torch.cat(chunks, dim=1), expected, atol=1e-4, rtol=1e-4)


def test_keep_returns_only_the_last_positions(tiny_llama: LoadedModel) -> None:
    lean = tiny_llama.forward
    assert isinstance(lean, LlamaForward)
    ids, mask = padded_batch(tiny_llama.model.config.vocab_size, [6, 4])
    with torch.inference_mode():
        full = lean(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), GrowingCache(len(lean.layers)), 0)
        last = lean(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), GrowingCache(len(lean.layers)), 1)
    assert full.shape[:2] == (2, 6) and last.shape[:2] == (2, 1)
    assert torch.allclose(last[:, 0], full[:, -1], atol=1e-5)


def test_qwen2_biases_are_carried(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=256,
        use_sliding_window=False,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                assert proj.bias is not None
                proj.bias.normal_()  # zero-initialised otherwise: a missed bias would go unnoticed
    ids, mask = padded_batch(300, [9, 5])
    expected = reference_logits(model, ids, mask)
    got = lean_logits_stepwise(LlamaForward(model), ids, mask, prefill=4)
    real = mask.bool()
    assert torch.allclose(got[real], expected[real], atol=1e-4, rtol=1e-4)


def test_fusing_keeps_the_model_usable_without_copying_weights(tiny_llama_settings: Settings) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_settings.model, dtype=torch.float32).eval()
    ids, mask = padded_batch(model.config.vocab_size, [8])
    before = reference_logits(model, ids, mask)
    lean = LlamaForward(model)
    layer = model.model.layers[0]

    # The model's projections are now views into the fused matrices: one copy of the weights.
    def storage(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    fused = lean.layers[0]
    assert isinstance(fused.qkv, _Dense) and isinstance(fused.gate_up, _Dense)
    assert storage(layer.self_attn.k_proj.weight) == storage(fused.qkv.weight)
    assert storage(layer.mlp.up_proj.weight) == storage(fused.gate_up.weight)
    assert torch.equal(reference_logits(model, ids, mask), before)


def test_packed_projections_compute_what_the_dense_ones_do_from_one_copy(tiny_llama_settings: Settings) -> None:
    """In bfloat16 on a CPU whose oneDNN runs it, the projections are packed for oneDNN's matmul: same
    logits as the dense pass, the model's own layers compute through the packed copy, and no dense
    copy is kept."""

    def bf16() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(tiny_llama_settings.model, dtype=torch.bfloat16).eval()

    runs_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    model = bf16()
    assert packing_pays(model.lm_head.weight) == (runs_bf16 and torch.backends.mkldnn.is_available())
    assert not packing_pays(model.lm_head.weight.float())  # slower than the default kernel in float32
    if not runs_bf16:  # this CPU's oneDNN has no bfloat16: the pass stays dense by itself
        assert not LlamaForward(model).packed
        return
    ids, mask = padded_batch(model.config.vocab_size, [12, 7, 12, 3])
    before = reference_logits(model, ids, mask)
    dense = lean_logits_stepwise(LlamaForward(bf16(), pack=False), ids, mask, prefill=5)
    lean = LlamaForward(model)
    assert lean.packed and isinstance(lean.layers[0].qkv, _Packed) and isinstance(lean.layers[0].down, _Packed)
    packed = lean_logits_stepwise(lean, ids, mask, prefill=5)
    real = mask.bool()
    assert torch.allclose(packed[real].float(), dense[real].float(), atol=2e-2, rtol=2e-2)
    attn = model.model.layers[0].self_attn
    assert isinstance(attn.q_proj, _PackedPart) and attn.v_proj.fused is lean.layers[0].qkv
    assert not any(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())
    after = reference_logits(model, ids, mask)
    assert torch.allclose(after[real].float(), before[real].float(), atol=2e-2, rtol=2e-2)


def test_loader_uses_the_lean_pass_only_where_it_applies(
    tiny_loaded: LoadedModel, tiny_llama: LoadedModel, tiny_llama_settings: Settings
) -> None:
    assert tiny_llama.lean and isinstance(tiny_llama.forward, LlamaForward)
    assert not tiny_loaded.lean and isinstance(tiny_loaded.forward, TransformersForward)
    assert supports(tiny_loaded.model) == "model type 'bloom'"
    off = load_model(tiny_llama_settings.model_copy(update={"lean_forward": False}))
    assert not off.lean and isinstance(off.forward, TransformersForward)


@pytest.mark.parametrize("change", [{"hidden_act": "gelu"}, {"mlp_bias": True}])
def test_unsupported_variants_are_refused(tiny_llama_settings: Settings, change: dict[str, object]) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_settings.model, dtype=torch.float32)
    for key, value in change.items():
        setattr(model.config, key, value)
    assert supports(model) is not None
    with pytest.raises(ValueError, match="does not cover"):
        LlamaForward(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropping_the_dense_weights_leaves_the_4bit_pass(tiny_llama_settings: Settings, dtype: torch.dtype) -> None:
    """With 4-bit copies for small steps, `drop_dense` lets every dense projection go (its bytes are
    reported): prompts and decode steps then compute exactly what a pass built 4-bit throughout does,
    and the model's own layers compute through the 4-bit weights too."""

    def load() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(tiny_llama_settings.model, dtype=dtype).eval()

    model, int4_model = load(), load()
    dense_bytes = sum(
        linear.weight.numel() * linear.weight.element_size()
        for layer in model.model.layers
        for linear in (*layer.self_attn.children(), *layer.mlp.children())
        if isinstance(linear, torch.nn.Linear)
    )
    lean = LlamaForward(model, int4_tokens=2)
    int4_only = LlamaForward(int4_model, int4=True)
    assert isinstance(lean.layers[0].qkv, _ByTokens) and isinstance(lean.layers[-1].down, _ByTokens)
    ids, mask = padded_batch(model.config.vocab_size, [12, 7, 3])
    real = mask.bool()
    expected = lean_logits_stepwise(int4_only, ids, mask, prefill=5)
    assert not torch.equal(lean_logits_stepwise(lean, ids, mask, prefill=5)[real], expected[real])  # prompts ran dense

    assert lean.drop_dense() == dense_bytes
    assert not any(isinstance(projection, _ByTokens) for layer in lean.layers for projection in vars(layer).values())
    assert torch.equal(lean_logits_stepwise(lean, ids, mask, prefill=5)[real], expected[real])
    assert not any(isinstance(m, torch.nn.Linear) for m in model.model.layers.modules())
    own, reference = reference_logits(model, ids, mask), reference_logits(int4_model, ids, mask)
    assert torch.allclose(own[real].float(), reference[real].float(), atol=float(reference.abs().max()) * 1e-3)
