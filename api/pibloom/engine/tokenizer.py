"""A checkpoint's tokenizer read with the `tokenizers` library alone, and its chat template rendered
with jinja2, as transformers' generic tokenizer class (`TokenizersBackend`) reads and renders them.

Importing transformers costs a served worker 33 MB of resident memory and a second of every start
(measured), though for a checkpoint that `checkpoint` reads it serves nothing but this.
`Tokenizer.load` raises `NotReadable` for the folders this class does not reproduce exactly; those go
through transformers.
The tests hold both to the same ids, texts and rendered conversations.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from jinja2 import TemplateError, nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.runtime import Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as Backend

# The special-token keys of tokenizer_config.json, in the order transformers lists them to templates.
_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# What transformers' space clean-up replaces, for tokenizers other than BPE that ask for it.
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file (config, tokenizer config, index), which is an object."""
    with path.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _content(value: Any) -> str | None:
    """A special token as tokenizer_config.json gives it: a string or a serialised `AddedToken`."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class NotReadable(ValueError):
    """The folder's tokenizer is one `Tokenizer` would not read as transformers does (the reason)."""


def _unreadable(backend: Backend, config: dict[str, Any]) -> str | None:
    for index, token in (config.get("added_tokens_decoder") or {}).items():
        if backend.token_to_id(_content(token) or "") != int(index):
            return "tokens added in tokenizer_config.json"
    if config.get("extra_special_tokens") or config.get("additional_special_tokens"):
        return "extra special tokens"
    if config.get("add_bos_token") or config.get("add_eos_token"):
        return "BOS or EOS added by tokenizer_config.json's flags"
    return None


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own filter escapes HTML; chat templates expect JSON as it is.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}` renders its body: templates mark assistant turns with it
    for training masks, which serving never asks for."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Macro) -> str:
        rendered: str = caller()
        return rendered


@lru_cache(maxsize=8)
def _compiled(template: str) -> Any:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment.from_string(template)


def _chat_template(folder: Path, config: dict[str, Any]) -> str | dict[str, str] | None:
    """The template file beside the tokenizer first, then chat_template.json, then tokenizer_config.json."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    found: Any = None
    if (folder / "chat_template.json").is_file():
        found = read_json(folder / "chat_template.json").get("chat_template")
    if found is None:
        found = config.get("chat_template")
    if isinstance(found, list):  # named templates: [{"name": ..., "template": ...}]
        return {entry["name"]: entry["template"] for entry in found}
    return found if isinstance(found, str | dict) else None


class Tokenizer:
    """What the server asks of a tokenizer: ids of text, text of ids, the special tokens and the chat
    template, over one `tokenizers.Tokenizer` (`backend_tokenizer`, as transformers names it)."""

    def __init__(self, backend: Backend, config: dict[str, Any], chat_template: str | dict[str, str] | None) -> None:
        self.backend_tokenizer = backend
        self.chat_template = chat_template
        self.special: dict[str, str | None] = {key: _content(config.get(key)) for key in _SPECIAL}
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))

    @classmethod
    def load(cls, folder: Path) -> Tokenizer:
        """The tokenizer in `folder`; `NotReadable` where transformers would read it otherwise."""
        config = read_json(folder / "tokenizer_config.json")
        backend = Backend.from_file(str(folder / "tokenizer.json"))
        reason = _unreadable(backend, config)
        if reason is not None:
            raise NotReadable(reason)
        return cls(backend, config, _chat_template(folder, config))

    def _id(self, key: str) -> int | None:
        token = self.special.get(key)
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def bos_token(self) -> str | None:
        return self.special["bos_token"]

    @property
    def eos_token(self) -> str | None:
        return self.special["eos_token"]

    @property
    def pad_token(self) -> str | None:
        return self.special["pad_token"]

    @pad_token.setter
    def pad_token(self, token: str | None) -> None:
        self.special["pad_token"] = token

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._id("pad_token")

    def __len__(self) -> int:
        size: int = self.backend_tokenizer.get_vocab_size(with_added_tokens=True)
        return size

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": self.encode(text, add_special_tokens=add_special_tokens)}

    def decode(self, ids: int | Sequence[int], skip_special_tokens: bool = False) -> str:
        text: str = self.backend_tokenizer.decode([ids] if isinstance(ids, int) else list(ids), skip_special_tokens)
        # transformers skips the clean-up for BPE, where it would strip real spaces before punctuation.
        if self.clean_up_tokenization_spaces and type(self.backend_tokenizer.model).__name__ != "BPE":
            for before, after in _CLEAN_UP:
                text = text.replace(before, after)
        return text

    def apply_chat_template(
        self,
        conversation: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = False,
        tokenize: bool = False,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        """The conversation rendered through the chat template (text only: `tokenize` must be False)."""
        if tokenize:
            raise ValueError("this tokenizer renders chat templates as text only")
        if not conversation:
            raise ValueError("Cannot apply chat template to an empty conversation. Provide at least one message.")
        template = self.chat_template
        if isinstance(template, dict):
            template = template.get("tool_use") if tools and "tool_use" in template else template.get("default")
        if not template:
            raise ValueError("the tokenizer has no chat template")
        specials = {key: value for key, value in self.special.items() if value is not None}
        rendered: str = _compiled(template).render(
            messages=conversation,
            tools=tools,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **{**specials, **kwargs},
        )
        return rendered
