"""Llama checkpoints read without transformers' model classes (`engine.checkpoint`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from pibloom.engine import checkpoint
from pibloom.engine.checkpoint import LlamaCheckpoint, RotaryEmbedding
from pibloom.engine.loader import LoadedModel, load_model
from pibloom.settings import Settings

from generation import transformers_twin


def copy_with(folder: Path, target: Path, config: dict[str, object] | None = None, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(folder, target)
    path = target / "config.json"
    values = json.loads(path.read_text())
    values.update(config or {})
    for key in drop:
        values.pop(key)
    path.write_text(json.dumps(values))
    return target


def test_the_same_weights_config_and_tokenizer_as_transformers_reads(tiny_llama_settings: Settings) -> None:
    folder = Path(tiny_llama_settings.model)
    assert checkpoint.unreadable(folder) is None
    ours = checkpoint.load(folder, torch.float32, torch.device("cpu"))
    theirs = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    own, reference = ours.state_dict(), theirs.state_dict()
    assert own.keys() == reference.keys()
    assert all(torch.equal(own[name], reference[name]) for name in own)
    assert all(not p.requires_grad and p.device.type == "cpu" for p in ours.parameters())
    for key in ("num_key_value_heads", "rms_norm_eps", "vocab_size", "max_position_embeddings", "model_type"):
        assert getattr(ours.config, key) == getattr(theirs.config, key)
    assert ours.generation_config.eos_token_id == theirs.generation_config.eos_token_id
    tokenizer = checkpoint.tokenizer(folder)
    text = "The quick brown fox, 日本語"
    assert tokenizer(text)["input_ids"] == AutoTokenizer.from_pretrained(folder)(text)["input_ids"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_embeddings_are_transformers_own(dtype: torch.dtype) -> None:
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, head_dim=64, rope_parameters={"rope_theta": 1e5})
    positions = torch.randint(0, 8192, (3, 17), generator=torch.Generator().manual_seed(0))
    x = torch.zeros(1, dtype=dtype)
    ours = RotaryEmbedding(64, 1e5)(x, positions)
    theirs = LlamaRotaryEmbedding(config)(x, positions)
    assert all(torch.equal(a, b) and a.dtype == dtype for a, b in zip(ours, theirs, strict=True))


def test_tied_output_layer_is_the_embedding_and_computes_as_transformers(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(3)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "tied")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "tied", dtype=torch.float32).eval()
    ours = checkpoint.load(tmp_path / "tied", torch.float32, torch.device("cpu"))
    assert ours.lm_head.weight is ours.model.embed_tokens.weight
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(transformers_twin(ours)(ids).logits, theirs(ids).logits)


@pytest.mark.parametrize(
    ("change", "drop", "reason"),
    [
        ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}, (), "rotary"),
        ({}, ("rms_norm_eps",), "rms_norm_eps"),
        ({"model_type": "mistral"}, (), "model type"),
        ({"attention_bias": True}, (), "biases"),
    ],
)
def test_what_it_does_not_cover_loads_through_transformers(
    tiny_llama_settings: Settings, tmp_path: Path, change: dict[str, object], drop: tuple[str, ...], reason: str
) -> None:
    folder = copy_with(Path(tiny_llama_settings.model), tmp_path / "variant", change, drop)
    why = checkpoint.unreadable(folder)
    assert why is not None and reason in why
    if reason in ("rms_norm_eps", "rotary"):  # still a model transformers reads, and the lean pass runs
        loaded = load_model(tiny_llama_settings.model_copy(update={"model": str(folder)}))
        assert not isinstance(loaded.model, LlamaCheckpoint) and loaded.lean


def test_a_tokenizer_class_of_its_own_goes_through_transformers(tiny_llama_settings: Settings, tmp_path: Path) -> None:
    folder = copy_with(Path(tiny_llama_settings.model), tmp_path / "own-tokenizer")
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "tokenizer_class": "LlamaTokenizer"}))
    assert checkpoint.unreadable(folder) == "a tokenizer class of its own"


def test_missing_weights_fail_clearly(tiny_llama_settings: Settings, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = copy_with(Path(tiny_llama_settings.model), tmp_path / "partial")
    weights = load_file(folder / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.norm\.weight"):
        checkpoint.load(folder, torch.float32, torch.device("cpu"))


# What a worker serving the lean pass never imports: the compiler and transformers (~90 and ~33 MB
# resident), and, until a request asks for structured output, the grammar and JSON Schema libraries.
HEAVY = ("torch._dynamo", "torch._inductor", "transformers", "llguidance", "jsonschema")


def heavy_imports_of_a_load(settings: Settings) -> tuple[bool, list[str]]:
    """Which of transformers' model code and torch's compiler a fresh process imports to load the
    model of `settings` (given through the environment, as a worker reads them) and serve a request
    with it, and whether it runs decode packages."""
    script = (
        "import asyncio, sys\n"
        "from pibloom.engine.loader import load_model\n"
        "from pibloom.engine.request import SamplingParams\n"
        "from pibloom.engine.scheduler import Engine\n"
        "from pibloom.settings import Settings\n"
        "loaded = load_model(Settings())\n"
        "engine = Engine(loaded, max_batch_size=4, max_queue=4, prefill_chunk=16)\n"
        "engine.start()\n"
        "async def serve(prompt):\n"
        "    return [e async for e in engine.stream(prompt, SamplingParams(max_tokens=4, temperature=0.0))]\n"
        "async def both():\n"
        "    return await asyncio.gather(serve([5, 6, 7, 8, 9]), serve([10, 11]))\n"
        "assert all(asyncio.run(both()))\n"
        "engine.shutdown(10)\n"
        "packaged = bool(getattr(loaded.forward.compiled, 'packaged', False))\n"
        f"print(loaded.forward_name, packaged, sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    names = {"model": "MODEL", "cache_dir": "CACHE_DIR", "dtype": "DTYPE", "quantize": "QUANTIZE", "device": "DEVICE"}
    env = {**os.environ, **{f"PIBLOOM_{var}": str(getattr(settings, key)) for key, var in names.items()}}
    env["PIBLOOM_DECODE_PACKAGES"] = str(settings.decode_packages).lower()
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    forward, packaged, imported = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert forward == "lean"
    return packaged == "True", list(json.loads(imported.replace("'", '"')))


def test_the_lean_pass_serves_it_without_importing_model_classes_or_the_compiler(
    tiny_llama: LoadedModel, tiny_llama_settings: Settings
) -> None:
    """What the checkpoint reader is for: a worker that loads the model and serves requests imports
    neither transformers' model classes nor torch's compiler (~90 MB of resident memory in the served
    worker)."""
    assert isinstance(tiny_llama.model, LlamaCheckpoint) and tiny_llama.lean
    assert heavy_imports_of_a_load(tiny_llama_settings) == (False, [])
