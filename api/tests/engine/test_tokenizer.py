"""piBLOOM's tokenizer (`engine.tokenizer`) gives what transformers' tokenizer gives for the same folder:
ids, texts, special tokens and rendered conversations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from jinja2 import TemplateError
from transformers import AutoTokenizer

from pibloom.engine import checkpoint
from pibloom.engine.tokenizer import NotReadable, Tokenizer
from pibloom.settings import Settings

TEXTS = [
    "The quick brown fox, 日本語",
    "  leading spaces and a trailing one ",
    "</s> a special token in the text <s>",
    "Numbers 0 1 2 3 and symbols {} [] () <> : ; , . ! ?",
    "",
]
# A template in the style of the ones served: a default system turn, tools rendered as JSON, a guard
# that raises, loop controls and a `generation` block.
TEMPLATE = (
    "{% if messages[0]['role'] == 'assistant' %}{{ raise_exception('assistant first') }}{% endif %}"
    "{% if tools %}<tools>{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}</tools>\n{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'skip' %}{% continue %}{% endif %}"
    "{{ bos_token }}{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token }}assistant\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "Hello — ça va? 日本"},
    {"role": "skip", "content": "not rendered"},
    {"role": "assistant", "content": "Fine."},
    {"role": "user", "content": "And the weather?"},
]
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]


def variant(tiny_llama_settings: Settings, target: Path, **config: Any) -> Path:
    """The tiny Llama's tokenizer folder with `config` merged into its tokenizer_config.json."""
    shutil.copytree(Path(tiny_llama_settings.model), target)
    path = target / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return target


def assert_same(folder: Path) -> None:
    ours, theirs = Tokenizer.load(folder), AutoTokenizer.from_pretrained(folder)
    assert len(ours) == len(theirs)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "bos_token", "eos_token", "pad_token"):
        assert getattr(ours, key) == getattr(theirs, key), key
    for text in TEXTS:
        for special in (True, False):
            ids = ours(text, add_special_tokens=special)["input_ids"]
            assert ids == theirs(text, add_special_tokens=special)["input_ids"]
            assert ours.encode(text, add_special_tokens=special) == ids
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    if theirs.chat_template:
        for generation_prompt in (True, False):
            for tools in (None, TOOLS):
                kwargs: dict[str, Any] = {"add_generation_prompt": generation_prompt, "tokenize": False, "tools": tools}
                assert ours.apply_chat_template(CONVERSATION, **kwargs) == theirs.apply_chat_template(
                    CONVERSATION, **kwargs
                )


def test_the_tiny_models_tokenizer_is_read_as_transformers_reads_it(tiny_llama_settings: Settings) -> None:
    assert_same(Path(tiny_llama_settings.model))


def test_a_chat_template_in_the_config_renders_as_transformers_renders_it(
    tiny_llama_settings: Settings, tmp_path: Path
) -> None:
    folder = variant(tiny_llama_settings, tmp_path / "template", chat_template=TEMPLATE)
    assert_same(folder)
    with pytest.raises(TemplateError, match="assistant first"):
        Tokenizer.load(folder).apply_chat_template([{"role": "assistant", "content": "x"}])


def test_a_template_file_beside_the_tokenizer_comes_first(tiny_llama_settings: Settings, tmp_path: Path) -> None:
    folder = variant(tiny_llama_settings, tmp_path / "file", chat_template="{{ 'from the config' }}")
    (folder / "chat_template.jinja").write_text(TEMPLATE)
    assert Tokenizer.load(folder).chat_template == TEMPLATE
    assert_same(folder)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"added_tokens_decoder": {"999": {"content": "<|extra|>", "special": True}}}, "tokens added"),
        ({"add_bos_token": True}, "BOS or EOS added"),
    ],
)
def test_what_it_does_not_read_as_transformers_does_is_read_by_transformers(
    tiny_llama_settings: Settings, tmp_path: Path, config: dict[str, Any], reason: str
) -> None:
    """The checkpoint is still read without transformers' model classes; its tokenizer is transformers'."""
    folder = variant(tiny_llama_settings, tmp_path / "other", **config)
    with pytest.raises(NotReadable, match=reason):
        Tokenizer.load(folder)
    assert checkpoint.unreadable(folder) is None
    assert type(checkpoint.tokenizer(folder)).__name__ == "TokenizersBackend"


def test_the_server_reads_the_lean_checkpoints_tokenizer_with_it(tiny_llama_settings: Settings) -> None:
    assert isinstance(checkpoint.tokenizer(Path(tiny_llama_settings.model)), Tokenizer)
