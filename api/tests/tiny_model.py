"""Tiny random-weight BLOOM and Llama models with a tokenizer trained at test time, saved as HF folders."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "piBLOOM serves small language models to many users at once.",
    "Hello, how are you today? I am fine, thank you.",
    "Continuous batching lets requests join and leave at every step.",
    "Raspberry Pi clusters run microk8s with ARM64 nodes.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols {} [] () <> : ; , . ! ?",
    "User: hi\nAssistant: hello there\n",
    "El niño comió una manzana. Überall grüne Bäume. 日本語のテキスト。",
]


def _tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "</s>", "<s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def _save(model, folder: Path, eos_token_id: int) -> Path:  # type: ignore[no-untyped-def]
    import torch

    # Random init is near-uniform; a larger output projection separates greedy choices clearly.
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
        # A constant zero logit for end-of-sequence: rarely the maximum, so outputs run their length.
        model.lm_head.weight[eos_token_id].zero_()
    model.save_pretrained(folder)
    return folder


def build_tiny_bloom(folder: Path, *, layers: int = 2, hidden: int = 64, heads: int = 4) -> Path:
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    fast = _tokenizer(folder)
    torch.manual_seed(0)
    config = BloomConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        n_layer=layers,
        n_head=heads,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        seq_length=1024,
        tie_word_embeddings=False,  # tied random weights make the model echo its input
    )
    return _save(BloomForCausalLM(config), folder, fast.eos_token_id)


def build_tiny_llama(folder: Path) -> Path:
    """The embedded model's architecture in miniature, with grouped-query attention (4 heads, 2 kv)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = _tokenizer(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    return _save(LlamaForCausalLM(config), folder, fast.eos_token_id)
