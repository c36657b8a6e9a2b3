"""Measure the grammar libraries piBLOOM could use for structured output (issue 13), on this CPU.

Not part of the package: it needs all three candidates installed (`pip install --no-deps llguidance
xgrammar apache-tvm-ffi outlines-core`). For each library and schema: compile time, the time to compute
one token mask over the embedded model's vocabulary (averaged along a valid document, token by
token), and whether the schema is accepted at all (coverage).

    .venv/bin/python scripts/measure_grammar_libs.py [MODEL_DIR]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "nested object": (
        {
            "type": "object",
            "properties": {
                "user": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
            },
            "required": ["user"],
        },
        {"user": {"name": "Ada"}},
    ),
    "array min/max items": (
        {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
        [1, 2, 3],
    ),
    "enum": ({"type": "string", "enum": ["red", "green", "blue"]}, "green"),
    "integer range": ({"type": "integer", "minimum": 10, "maximum": 99}, 42),
    "string pattern": ({"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}, "ABC-12"),
    "anyOf": ({"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 5}]}, "abc"),
    "$ref": (
        {
            "$defs": {"pt": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
            "type": "object",
            "properties": {"a": {"$ref": "#/$defs/pt"}, "b": {"$ref": "#/$defs/pt"}},
            "required": ["a", "b"],
        },
        {"a": {"x": 1.5}, "b": {"x": 2}},
    ),
    "string length": ({"type": "string", "minLength": 2, "maxLength": 8}, "hello"),
    "format date-time": ({"type": "string", "format": "date-time"}, "2024-01-02T03:04:05Z"),
    "oneOf": ({"oneOf": [{"type": "integer"}, {"type": "boolean"}]}, True),
    "allOf": ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}]}, {"a": 1}),
    "const": ({"const": "fixed"}, "fixed"),
    "additionalProperties schema": (
        {"type": "object", "additionalProperties": {"type": "integer"}},
        {"k": 1, "j": 2},
    ),
    "exclusiveMinimum": ({"type": "number", "exclusiveMinimum": 0}, 0.5),
    "multipleOf": ({"type": "integer", "multipleOf": 3}, 9),
    "uniqueItems": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, [1, 2]),
    "not": ({"not": {"type": "string"}}, 1),
    "if/then": ({"if": {"type": "integer"}, "then": {"minimum": 0}}, 1),
    "recursive $ref": (
        {
            "$defs": {
                "node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}
            },
            "$ref": "#/$defs/node",
        },
        {"kids": [{"kids": []}]},
    ),
}


def byte_vocab(tokenizer: Any) -> dict[bytes, list[int]]:
    """GPT-2 byte-level token strings back to the bytes they stand for (what outlines-core wants)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    decode = {chr(c): b for b, c in zip(bs, cs, strict=True)}
    out: dict[bytes, list[int]] = {}
    for token, idx in tokenizer.get_vocab().items():
        if idx == tokenizer.eos_token_id:
            continue
        try:
            raw = bytes(decode[ch] for ch in token)
        except KeyError:
            raw = token.encode()
        out.setdefault(raw, []).append(idx)
    return out


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer: Any) -> None:
        import llguidance
        import llguidance.hf

        self.lib = llguidance
        self.tok = llguidance.hf.from_tokenizer(tokenizer)
        self.vocab = self.tok.vocab_size

    def compile(self, schema: dict[str, Any]) -> Any:
        grammar = self.lib.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        m = self.lib.LLMatcher(self.tok, grammar)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def mask(self, m: Any, buf: torch.Tensor) -> None:
        m.unsafe_compute_mask_ptr(buf.data_ptr(), buf.numel() * 4)

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.consume_token(token))


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Any) -> None:
        import xgrammar

        self.lib = xgrammar
        self.info = xgrammar.TokenizerInfo.from_huggingface(tokenizer)
        self.compiler = xgrammar.GrammarCompiler(self.info)
        self.vocab = self.info.vocab_size

    def compile(self, schema: dict[str, Any]) -> Any:
        compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        return self.lib.GrammarMatcher(compiled)

    def mask(self, m: Any, buf: torch.Tensor) -> None:
        m.fill_next_token_bitmask(buf.view(1, -1))

    def accept(self, m: Any, token: int) -> bool:
        return bool(m.accept_token(token))


class OutlinesCore:
    name = "outlines-core"

    def __init__(self, tokenizer: Any) -> None:
        import outlines_core

        self.lib = outlines_core
        self.vocabulary = outlines_core.Vocabulary(tokenizer.eos_token_id, byte_vocab(tokenizer))
        self.vocab = len(tokenizer)

    def compile(self, schema: dict[str, Any]) -> Any:
        regex = self.lib.json_schema.build_regex_from_schema(json.dumps(schema))
        return self.lib.Guide(self.lib.Index(regex, self.vocabulary))

    def mask(self, m: Any, buf: torch.Tensor) -> None:
        m.write_mask_into(buf.data_ptr(), buf.numel(), 4)

    def accept(self, m: Any, token: int) -> bool:
        m.advance(token)
        return True


def measure(lib: Any, tokenizer: Any) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    buf = torch.zeros((lib.vocab + 31) // 32, dtype=torch.int32)
    for name, (schema, instance) in SCHEMAS.items():
        start = time.perf_counter()
        try:
            matcher = lib.compile(schema)
        except Exception as exc:
            rows[name] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:80]}"}
            continue
        compiled = time.perf_counter() - start
        text = json.dumps(instance, separators=(",", ":"))
        times = []
        ok = True
        for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
            t0 = time.perf_counter()
            lib.mask(matcher, buf)
            times.append(time.perf_counter() - t0)
            allowed = bool((buf[token // 32] >> (token % 32)) & 1)
            if not allowed or not lib.accept(matcher, token):
                ok = False  # tokenization differs from what the grammar allows: timing still counts
                break
        rows[name] = {
            "ok": True,
            "walk_ok": ok,
            "compile_ms": round(compiled * 1000, 2),
            "mask_us_median": round(statistics.median(times) * 1e6, 1) if times else None,
            "mask_us_max": round(max(times) * 1e6, 1) if times else None,
        }
    return rows


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else next(Path(".cache/pibloom/converted").iterdir())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.set_num_threads(1)
    report = {}
    for cls in (LLGuidance, XGrammar, OutlinesCore):
        t0 = time.perf_counter()
        try:
            lib = cls(tokenizer)
        except Exception as exc:
            report[cls.name] = {"setup_error": repr(exc)}
            continue
        setup = time.perf_counter() - t0
        rows = measure(lib, tokenizer)
        medians = [r["mask_us_median"] for r in rows.values() if r.get("mask_us_median")]
        report[cls.name] = {
            "tokenizer_setup_s": round(setup, 2),
            "schemas_accepted": f"{sum(r['ok'] for r in rows.values())}/{len(rows)}",
            "mask_us_median_over_schemas": round(statistics.median(medians), 1) if medians else None,
            "rows": rows,
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
