"""Llama checkpoints read without transformers.

Importing any transformers model class imports torch's compiler with it (`generation.utils` ->
`masking_utils` -> `torch._dynamo` -> parts of inductor): ~90 MB of resident memory in every worker,
for code the lean forward pass (`llama_forward`) never runs, and importing transformers at all costs
another 33 MB and a second of every start. Where that pass computes the model, the model is read
here instead: its config.json into a plain `Config`, its safetensors into a module tree with the
attribute names of transformers' `LlamaForCausalLM` (what `llama_forward`, `output_head` and
`quantize` read), and its tokenizer through `engine.tokenizer`. Anything this does not cover goes
through transformers as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .tokenizer import NotReadable, Tokenizer, read_json

# What the module tree below computes exactly; `llama_forward.supports` then decides on the rest.
_MODEL_TYPES = frozenset({"llama"})
# Keys read from config.json: a checkpoint missing one relies on a class default, which is
# transformers' to know, so it loads through transformers.
_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "vocab_size",
    "max_position_embeddings",
    "tie_word_embeddings",
)
# Tokenizer classes that are the generic `tokenizers`-backed one; others may add behaviour of their own.
_GENERIC_TOKENIZERS = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


def _rope_theta(config: dict[str, Any]) -> float | None:
    """The base of default rotary embeddings; None for any other kind (scaled, partial, dynamic)."""
    params = config.get("rope_parameters")
    if params is None and config.get("rope_scaling") is None and "rope_theta" in config:
        params = {"rope_type": "default", "rope_theta": config["rope_theta"]}
    if not isinstance(params, dict) or params.get("rope_type", "default") != "default" or "rope_theta" not in params:
        return None
    if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
        return None
    return float(params["rope_theta"])


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(read_json(index)["weight_map"].values()))
        return [folder / name for name in names]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def unreadable(folder: Path) -> str | None:
    """None when `load` reads this folder; otherwise why it goes through transformers."""
    if not (folder / "config.json").is_file():
        return "no config.json"
    config = read_json(folder / "config.json")
    if config.get("model_type") not in _MODEL_TYPES:
        return f"model type {config.get('model_type')!r}"
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        return f"config.json leaves {', '.join(missing)} to the class defaults"
    if config.get("hidden_act", "silu") != "silu" or config.get("attention_bias") or config.get("mlp_bias"):
        return "biases or an activation other than SiLU"
    if config.get("sliding_window"):
        return "sliding-window attention"
    if _rope_theta(config) is None:
        return "rotary embeddings other than the default kind"
    weights = _weight_files(folder)
    if not weights or not all(path.is_file() for path in weights):
        return "no safetensors weights"
    tokenizer_config = folder / "tokenizer_config.json"
    if not (folder / "tokenizer.json").is_file() or not tokenizer_config.is_file():
        return "no tokenizer.json"
    if read_json(tokenizer_config).get("tokenizer_class") not in _GENERIC_TOKENIZERS:
        return "a tokenizer class of its own"
    return None


class Config:
    """config.json's keys as attributes; a key it lacks is an AttributeError, as on transformers'
    `PretrainedConfig` for keys no class default covers (`unreadable` sends those checkpoints there)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)


class GenerationDefaults:
    """generation_config.json: the server reads its end-of-sequence ids; the rest is kept as read."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = dict(values)
        self.eos_token_id: int | list[int] | None = values.get("eos_token_id")


class RotaryEmbedding(nn.Module):
    """Default rotary embeddings: cos and sin [rows, steps, head_dim] of `positions`, in float32 and
    then `x`'s dtype, as transformers computes them (tested equal)."""

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim
        self.register_buffer("inv_freq", 1.0 / (theta**exponents), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class _Linear(nn.Linear):
    """A linear layer whose weights the checkpoint assigns: no initialisation (on the meta device that
    would run torch's reference kernels, which import the compiler)."""

    def reset_parameters(self) -> None:
        pass


class _Embedding(nn.Embedding):
    """An embedding whose table the checkpoint assigns, likewise not initialised."""

    def reset_parameters(self) -> None:
        pass


class _Norm(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int) -> None:
        super().__init__()
        self.q_proj = _Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = _Linear(hidden, kv_heads * head_dim, bias=False)
        self.v_proj = _Linear(hidden, kv_heads * head_dim, bias=False)
        self.o_proj = _Linear(heads * head_dim, hidden, bias=False)
        self.scaling = head_dim**-0.5


class _Mlp(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = _Linear(hidden, intermediate, bias=False)
        self.up_proj = _Linear(hidden, intermediate, bias=False)
        self.down_proj = _Linear(intermediate, hidden, bias=False)


class _Layer(nn.Module):
    def __init__(self, config: Any, head_dim: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.self_attn = _Attention(hidden, heads, kv_heads, head_dim)
        self.mlp = _Mlp(hidden, config.intermediate_size)
        self.input_layernorm = _Norm(hidden)
        self.post_attention_layernorm = _Norm(hidden)


class _Body(nn.Module):
    def __init__(self, config: Any, head_dim: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.embed_tokens = _Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Layer(config, head_dim) for _ in range(config.num_hidden_layers))
        self.norm = _Norm(config.hidden_size)
        self.rotary_emb = rotary


class LlamaCheckpoint(nn.Module):
    """A Llama model's weights under transformers' attribute names, with its config and generation
    config; it has no forward of its own (`llama_forward.LlamaForward` runs it)."""

    def __init__(self, config: Any, generation_config: Any, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.config = config
        self.generation_config = generation_config
        heads = int(config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        self.model = _Body(config, head_dim, rotary)
        self.lm_head = _Linear(config.hidden_size, config.vocab_size, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, head: nn.Module) -> None:
        self.lm_head = head


def load(folder: Path, dtype: torch.dtype, device: torch.device) -> LlamaCheckpoint:
    """The checkpoint in `folder` (which `unreadable` passed), in `dtype` on `device`."""
    from safetensors import safe_open

    raw = read_json(folder / "config.json")
    config = Config(raw)
    theta = _rope_theta(raw)
    if theta is None:
        raise ValueError(f"{folder}: rotary embeddings other than the default kind")
    head_dim = int(raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"])
    rotary = RotaryEmbedding(head_dim, theta).to(device)
    if (folder / "generation_config.json").is_file():
        generation = GenerationDefaults(read_json(folder / "generation_config.json"))
    else:
        generation = GenerationDefaults({"eos_token_id": raw.get("eos_token_id")})
    # Built on the meta device, so no memory is spent on weights the checkpoint replaces.
    with torch.device("meta"):
        model = LlamaCheckpoint(config, generation, rotary)
    expected = set(model.state_dict())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name in expected:
                    state[name] = f.get_tensor(name).to(device=device, dtype=dtype)
    missing = expected - set(state)
    if missing:
        raise ValueError(f"{folder} lacks weights: {', '.join(sorted(missing)[:5])}")
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.requires_grad_(False)
    return model.eval()


def tokenizer(folder: Path) -> Any:
    """The checkpoint's tokenizer: piBLOOM's reading of it where that is transformers' generic class's
    (`tokenizer.NotReadable`), else that class itself."""
    try:
        return Tokenizer.load(folder)
    except NotReadable:
        pass
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    return TokenizersBackend.from_pretrained(str(folder))
