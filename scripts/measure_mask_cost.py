"""What grammar-constrained rows add to one decode step's sampling, on the embedded model's vocabulary.

16 rows, random logits, a long JSON list as the grammar: the median time of mask + apply + sample +
accept for all 16 rows constrained, beside plain sampling of the same rows (README, structured output).

    .venv/bin/python scripts/measure_mask_cost.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import llguidance
import torch
from transformers import AutoTokenizer

from pibloom.engine.logits import RowShaper, accept_rows, shape_rows
from pibloom.engine.request import SamplingParams
from pibloom.engine.sampling import make_generator, sample_batch

ROWS, WIDTH, STEPS = 16, 49152, 64
SCHEMA = {"type": "array", "items": {"type": "string", "maxLength": 24}, "minItems": 200}


def main() -> None:
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(next(Path(".cache/pibloom/converted").iterdir()))
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
    params = SamplingParams(grammar=grammar, temperature=1.0)
    shapers: list[RowShaper | None] = [
        RowShaper(params, tokenizer, WIDTH, frozenset({tokenizer.eos_token_id})) for _ in range(ROWS)
    ]
    generators = [make_generator(i, torch.device("cpu")) for i in range(ROWS)]
    constrained, plain = [], []
    for _ in range(STEPS):
        logits = torch.randn(ROWS, WIDTH)
        start = time.perf_counter()
        tokens = sample_batch(shape_rows(logits, shapers), [params] * ROWS, generators, [[]] * ROWS)
        accept_rows(tokens, shapers)
        constrained.append(time.perf_counter() - start)
        start = time.perf_counter()
        sample_batch(logits, [params] * ROWS, generators, [[]] * ROWS)
        plain.append(time.perf_counter() - start)
    print(
        f"{ROWS} rows: {statistics.median(constrained) * 1000:.1f} ms a step constrained, "
        f"{statistics.median(plain) * 1000:.1f} ms plain"
    )


if __name__ == "__main__":
    main()
