"""llguidance's view of the vocabulary as the engine builds it: the token bytes of llguidance's own
reading of the tokenizer, with the Hugging Face tokenizer as its encoder, and the same masks."""

from __future__ import annotations

import random

import llguidance
import llguidance.hf
import numpy as np
import pytest
from transformers import AutoTokenizer

from pibloom.engine.constraints import grammar_tokenizer
from pibloom.engine.loader import LoadedModel
from pibloom.settings import Settings

GRAMMARS = {
    "object": llguidance.LLMatcher.grammar_from_json_schema(
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "tags": {"type": "array", "items": {"enum": ["x", "yy"]}},
            },
            "required": ["name", "tags"],
        }
    ),
    "any object": llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}),
    "ends on a special token": '%llguidance {}\nstart: "Answer: " /[0-9]+/ "\\n" </s>',
}


def mask(matcher: llguidance.LLMatcher) -> np.ndarray:
    return np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)


@pytest.mark.parametrize("name", list(GRAMMARS))
def test_the_compact_tokenizer_gives_the_masks_llguidance_builds_from_the_json(
    tiny_llama: LoadedModel, tiny_llama_settings: Settings, name: str
) -> None:
    """Against llguidance's own reading of transformers' tokenizer for the same folder."""
    tokenizer = tiny_llama.tokenizer
    width = int(tiny_llama.model.config.vocab_size)
    compact = grammar_tokenizer(tokenizer, width)
    reference = AutoTokenizer.from_pretrained(tiny_llama_settings.model)
    full = llguidance.hf.from_tokenizer(reference, n_vocab=max(len(reference), width))
    assert compact.vocab_size == full.vocab_size and compact.eos_tokens == full.eos_tokens
    specials = [i for i in range(full.vocab_size) if full.is_special_token(i)]
    assert specials and specials == [i for i in range(compact.vocab_size) if compact.is_special_token(i)]
    text = 'Answer: {"name": "ünïcode"} 42\n</s>'
    assert compact.tokenize_str(text) == full.tokenize_str(text)
    rng = random.Random(7)
    for _ in range(4):  # random walks through the grammar: every step's mask the same
        a, b = llguidance.LLMatcher(compact, GRAMMARS[name], log_level=0), llguidance.LLMatcher(full, GRAMMARS[name])
        for _ in range(40):
            ma, mb = mask(a), mask(b)
            assert np.array_equal(ma, mb)
            allowed = np.unpackbits(ma, bitorder="little")[:width].nonzero()[0]
            if a.is_stopped() or not len(allowed):
                break
            token = int(rng.choice(allowed))
            assert a.consume_token(token) == b.consume_token(token)
        assert a.is_stopped() == b.is_stopped()


def test_it_is_built_once_per_tokenizer(tiny_llama: LoadedModel) -> None:
    width = int(tiny_llama.model.config.vocab_size)
    assert grammar_tokenizer(tiny_llama.tokenizer, width) is grammar_tokenizer(tiny_llama.tokenizer, width)
