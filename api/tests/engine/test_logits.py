"""Per-row logits processing in the engine: n choices from one prefill, grammar masks that touch only
their own rows, OpenAI's penalties, logit bias, and a cancelled constrained request freeing its state."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
import weakref
from collections.abc import Iterator
from typing import Any

import jsonschema
import llguidance
import llguidance.torch
import pytest
import torch

from pibloom.engine import constraints
from pibloom.engine.loader import LoadedModel
from pibloom.engine.logits import RowShaper, shape_rows
from pibloom.engine.request import Event, SamplingParams
from pibloom.engine.scheduler import Engine
from pibloom.engine.threads import ThreadGovernor

from support import wait_for

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 50}, "tag": {"enum": ["a", "b"]}},
    "required": ["n", "tag"],
    "additionalProperties": False,
}


def grammar(schema: dict[str, Any]) -> str:
    return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})


class CountingForward:
    """The model's forward pass, counting the prompt tokens it is given (prefill calls only)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.prefilled = 0

    def __call__(self, ids: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if ids.shape[1] > 1:
            self.prefilled += int(ids.shape[1]) * int(ids.shape[0])
        return self.inner(ids, *args, **kwargs)


@pytest.fixture
def counting(tiny_llama: LoadedModel) -> Iterator[tuple[Engine, CountingForward]]:
    forward = CountingForward(tiny_llama.forward)
    engine = Engine(dataclasses.replace(tiny_llama, forward=forward), max_batch_size=8, max_queue=8)
    engine.start()
    yield engine, forward
    engine.shutdown(10)


async def collect(engine: Engine, prompt: list[int], params: SamplingParams) -> dict[int, tuple[list[int], str, str]]:
    out: dict[int, tuple[list[int], str, str]] = {}
    async for event in engine.stream(prompt, params):
        tokens, text, _ = out.get(event.index, ([], "", ""))
        out[event.index] = (tokens + event.token_ids, text + event.text, event.finish_reason or "")
    return out


def test_n_choices_prefill_the_prompt_once(counting: tuple[Engine, CountingForward], tiny_llama: LoadedModel) -> None:
    engine, forward = counting
    prompt = tiny_llama.tokenizer("The quick brown fox jumps over the lazy dog.")["input_ids"]
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=5, n=4, ignore_eos=True)
    out = asyncio.run(collect(engine, prompt, params))
    assert sorted(out) == [0, 1, 2, 3]
    assert forward.prefilled == len(prompt)  # one prefill, copied into four rows
    assert all(len(tokens) == 6 and reason == "length" for tokens, _, reason in out.values())
    # Choice i samples as a single request seeded seed + i would.
    for i in (0, 2):
        alone = asyncio.run(collect(engine, prompt, dataclasses.replace(params, n=1, seed=5 + i)))
        assert alone[0][0] == out[i][0]


def test_grammar_rows_mix_with_free_rows(counting: tuple[Engine, CountingForward], tiny_llama: LoadedModel) -> None:
    engine, _ = counting
    prompt = tiny_llama.tokenizer("Hello")["input_ids"]
    free = SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    constrained = SamplingParams(max_tokens=60, temperature=1.0, seed=1, grammar=grammar(SCHEMA), n=3)

    async def both() -> tuple[Any, Any, Any]:
        return await asyncio.gather(
            collect(engine, prompt, free), collect(engine, prompt, constrained), collect(engine, prompt, free)
        )

    alone = asyncio.run(collect(engine, prompt, free))
    first, shaped, second = asyncio.run(both())
    assert first[0][0] == alone[0][0] == second[0][0]  # masks touched no free row
    for _tokens, text, reason in shaped.values():
        assert reason == "stop"
        jsonschema.validate(json.loads(text), SCHEMA)


def test_cancelled_constrained_request_frees_its_grammar_and_slot(tiny_llama: LoadedModel) -> None:
    engine = Engine(tiny_llama, max_batch_size=2, max_queue=2)
    engine.start()
    try:
        loop = asyncio.new_event_loop()
        endless = {"type": "string", "pattern": "^[ab]{400}$"}  # cannot end before max_tokens
        params = SamplingParams(max_tokens=500, temperature=1.0, grammar=grammar(endless), n=2)
        stream = engine.stream(tiny_llama.tokenizer("Hello")["input_ids"], params)
        first: Event = loop.run_until_complete(anext(stream))
        assert first.finish_reason is None
        wait_for(lambda: len(engine._running) == 2, what="both choices running")
        states = [weakref.ref(s.shaper) for s in list(engine._running) if s.shaper is not None]
        assert len(states) == 2
        loop.run_until_complete(stream.aclose())  # the client goes away
        wait_for(lambda: not engine._running and engine.load()["running"] == 0, what="rows freed")
        gc.collect()
        assert all(ref() is None for ref in states)
        # The slots are free again: a request that needs both rows runs.
        again = loop.run_until_complete(collect(engine, [1, 2, 3], SamplingParams(max_tokens=3, n=2)))
        assert sorted(again) == [0, 1]
        loop.close()
    finally:
        engine.shutdown(10)


def test_penalties_follow_openai_semantics() -> None:
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias=((1, 2.0), (2, -100.0)))
    shaper = RowShaper(params, tokenizer=None, width=5, eos_ids=frozenset({4}))
    for token in (0, 0, 3):
        shaper.accept(token)
    logits = shaper.apply(torch.zeros(5))
    # token 0 seen twice: -(2 * 0.25 + 0.5); token 3 once: -(0.25 + 0.5); 1 biased +2; 2 banned.
    assert logits.tolist() == [-1.0, 2.0, float("-inf"), -0.75, 0.0]


def test_grammar_masks_of_a_batch_match_each_rows_own_mask(tiny_llama: LoadedModel) -> None:
    """The masks computed for all constrained rows at once are each row's own and land on their rows
    only; a row whose grammar has failed may only end (llguidance's mask says so itself)."""
    tokenizer = tiny_llama.tokenizer
    width = int(tiny_llama.model.config.vocab_size)
    eos = frozenset(tiny_llama.eos_token_ids)
    schemas = [SCHEMA, {"type": "array", "items": {"type": "string"}}, {"enum": ["yes", "no"]}]
    shapers: list[RowShaper | None] = [None]
    for schema in schemas:
        shapers += [RowShaper(SamplingParams(grammar=grammar(schema)), tokenizer, width, eos), None]
    # Rows in different states: one just started, one inside its first string, one sent a token its
    # grammar forbids (its matcher is in error).
    assert shapers[3] is not None and shapers[5] is not None
    for token in tokenizer('["ab', add_special_tokens=False)["input_ids"]:
        shapers[3].accept(token)
    shapers[5].accept(tokenizer("{", add_special_tokens=False)["input_ids"][0])
    logits = torch.randn(len(shapers), width)
    shaped = shape_rows(logits, shapers)
    for row, shaper in enumerate(shapers):
        if shaper is None:
            assert torch.equal(shaped[row], logits[row])  # a free row is left exactly as it was
            continue
        assert shaper.grammar is not None
        own = llguidance.torch.allocate_token_bitmask(1, width)
        llguidance.torch.fill_next_token_bitmask(shaper.grammar.matcher, own)
        allowed = [t for t in range(width) if own[0, t // 32].item() >> (t % 32) & 1]
        finite = torch.isfinite(shaped[row]).nonzero().flatten().tolist()
        assert finite == allowed
        assert torch.equal(shaped[row, finite], logits[row, finite])
    assert shapers[5].grammar is not None and shapers[5].grammar.matcher.is_error()
    assert torch.isfinite(shaped[5]).nonzero().flatten().tolist() == sorted(eos)


def test_a_row_whose_grammar_allows_nothing_may_only_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a mask come back empty (a tokenizer llguidance knows no end token for), the row is given
    its end tokens rather than a row of -inf to sample from."""
    monkeypatch.setattr("pibloom.engine.logits.GrammarState", lambda *args: object())
    monkeypatch.setattr(
        "pibloom.engine.logits.allowed_tokens",
        lambda states, width: torch.zeros(len(states), width, dtype=torch.bool),
    )
    shapers: list[RowShaper | None] = [
        RowShaper(SamplingParams(grammar="unused"), tokenizer=None, width=6, eos_ids=frozenset({eos})) for eos in (2, 4)
    ]
    shaped = shape_rows(torch.zeros(2, 6), shapers)
    assert [torch.isfinite(row).nonzero().flatten().tolist() for row in shaped] == [[2], [4]]


class RecordingGovernor(ThreadGovernor):
    """Keeps the wall and CPU time the engine reports for each iteration, and changes nothing."""

    def __init__(self) -> None:
        super().__init__(2, lambda _threads: None)
        self.iterations: list[tuple[float, float]] = []

    def record(self, wall_s: float, cpu_s: float) -> None:
        self.iterations.append((wall_s, cpu_s))


def test_the_governor_is_not_shown_the_waits_on_grammar_masks(
    tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine thread blocks while llguidance computes the masks on its own threads: a wait, not a
    neighbour holding the core, so it must not shrink torch's team."""
    executor = constraints._shared_executor()
    waits: list[float] = []

    class SlowMasks:
        def unsafe_compute_mask_ptr(self, *args: Any) -> None:
            executor.unsafe_compute_mask_ptr(*args)
            waits.append(0.2)
            time.sleep(0.2)  # masks that keep the engine thread waiting for 0.2 s

    monkeypatch.setattr(constraints, "_shared_executor", SlowMasks)
    governor = RecordingGovernor()
    engine = Engine(tiny_llama, max_batch_size=2, max_queue=2, threads=governor)
    engine.start()
    try:
        params = SamplingParams(max_tokens=4, temperature=0.0, grammar=grammar(SCHEMA))
        asyncio.run(collect(engine, tiny_llama.tokenizer("Hello")["input_ids"], params))
    finally:
        engine.shutdown(10)
    assert waits
    off_core = sum(wall - cpu for wall, cpu in governor.iterations)
    assert off_core < sum(waits) / 2  # counted in, it would be at least sum(waits)
