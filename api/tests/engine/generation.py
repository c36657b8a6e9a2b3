"""Helpers of the engine tests: prompts, greedy parameters, running a request, transformers' reference."""

from __future__ import annotations

import asyncio

import torch

from pibloom.engine.checkpoint import LlamaCheckpoint
from pibloom.engine.loader import LoadedModel
from pibloom.engine.request import SamplingParams
from pibloom.engine.scheduler import Engine

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "Raspberry Pi clusters",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols {} [] () <> : ; , . ! ?",
    "piBLOOM",
]


def ids(loaded: LoadedModel, text: str) -> list[int]:
    return list(loaded.tokenizer(text)["input_ids"])


def greedy(n: int = 24, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True, **kw)  # type: ignore[arg-type]


async def run(engine: Engine, prompt: list[int], params: SamplingParams) -> tuple[list[int], str, str]:
    tokens: list[int] = []
    text: list[str] = []
    reason = ""
    async for event in engine.stream(prompt, params):
        tokens.extend(event.token_ids)
        text.append(event.text)
        reason = event.finish_reason or reason
    return tokens, "".join(text), reason


async def engine_greedy(loaded: LoadedModel, *, batched: bool = True) -> list[list[int]]:
    """Every prompt's 20 greedy tokens from a fresh engine: all decoded in one batch, or one by one."""
    engine = Engine(loaded, max_batch_size=8, max_queue=8, prefill_chunk=16)
    engine.start()
    try:
        if batched:
            together = await asyncio.gather(*(run(engine, ids(loaded, p), greedy(20)) for p in PROMPTS))
            return [t[0] for t in together]
        return [(await run(engine, ids(loaded, p), greedy(20)))[0] for p in PROMPTS]
    finally:
        engine.shutdown(10)


def transformers_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A transformers model that computes with `model`'s own modules and weights, as loaded (4-bit,
    fused or packed alike). A model read by `engine.checkpoint` has no forward of its own; transformers'
    Llama code over the same modules is the reference it is held to. Any other model is returned as is.
    Built at each call, so it sees what the engine has done to the modules since."""
    if not isinstance(model, LlamaCheckpoint):
        return model
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(**model.config.to_dict())
    with torch.device("meta"):
        twin = LlamaForCausalLM(config)
    body, ours = twin.model, model.model
    body.embed_tokens, body.norm.weight = ours.embed_tokens, ours.norm.weight
    body.rotary_emb = LlamaRotaryEmbedding(config)
    for layer, own in zip(body.layers, ours.layers, strict=True):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(layer.self_attn, name, getattr(own.self_attn, name))
        for name in ("gate_proj", "up_proj", "down_proj"):
            setattr(layer.mlp, name, getattr(own.mlp, name))
        layer.input_layernorm.weight = own.input_layernorm.weight
        layer.post_attention_layernorm.weight = own.post_attention_layernorm.weight
    twin.lm_head = model.lm_head
    twin.generation_config = GenerationConfig(**model.generation_config.values)
    return twin.eval()


def reference(loaded: LoadedModel, prompt: list[int], n: int) -> list[int]:
    """transformers' own greedy `generate`, the output every optimisation must reproduce."""
    with torch.inference_mode():
        out = transformers_twin(loaded.model).generate(
            torch.tensor([prompt]),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id,
        )
    return out[0, len(prompt) :].tolist()
