"""The compiled decode step computes what the eager lean pass computes, on every cache the engine uses."""

from __future__ import annotations

import platform
import shutil

import pytest
import torch
from test_llama_forward import lean_logits_stepwise, padded_batch
from torch._inductor.codecache import InductorCacheArtifact
from torch.compiler._cache import CacheArtifactManager, CacheArtifactRecorder

from pibloom.engine import compiled_decode, loader
from pibloom.engine.compiled_decode import CompiledDecode, unavailable
from pibloom.engine.kv_cache import LaneGroup, LaneStep, SlotCache
from pibloom.engine.loader import LoadedModel, load_model
from pibloom.settings import Settings

from generation import engine_greedy


def load_compiled(settings: Settings, dtype: str, packages: bool = False) -> LoadedModel:
    """The tiny Llama with every projection in 4 bits: where the loader compiles the step, in this
    process, or as packages built ahead of time (`decode_packages`)."""
    loaded = load_model(settings.model_copy(update={"dtype": dtype, "quantize": "int4", "decode_packages": packages}))
    why_not = unavailable(loaded.forward)  # type: ignore[arg-type]
    if why_not is not None:
        pytest.skip(f"no compiled decode step on this machine: {why_not}")
    assert loaded.forward.compiled is not None  # type: ignore[attr-defined]
    return loaded


@pytest.fixture(scope="module")
def compiled(tiny_llama_settings: Settings) -> LoadedModel:
    """In float32, where the compiled and eager passes round alike enough for identical greedy tokens."""
    return load_compiled(tiny_llama_settings, "float32")


@pytest.fixture(scope="module")
def compiled_bf16(tiny_llama_settings: Settings) -> LoadedModel:
    """In bfloat16, as served: summed in another order, logits agree to bfloat16's rounding."""
    return load_compiled(tiny_llama_settings, "bfloat16")


@pytest.fixture(scope="module")
def packaged(tiny_llama_settings: Settings) -> LoadedModel:
    """The same graphs as packages, as the loader serves them by default."""
    return load_compiled(tiny_llama_settings, "float32", packages=True)


@pytest.fixture(scope="module")
def packaged_bf16(tiny_llama_settings: Settings) -> LoadedModel:
    return load_compiled(tiny_llama_settings, "bfloat16", packages=True)


def eager(loaded: LoadedModel) -> LoadedModel:
    """The same model and weights, its decode steps run by the eager pass."""
    lean = loaded.forward
    twin = object.__new__(type(lean))
    twin.__dict__.update(lean.__dict__)
    twin.compiled = None  # type: ignore[attr-defined]
    return LoadedModel(**{**loaded.__dict__, "forward": twin})


@pytest.mark.parametrize("graphs", ["compiled", "compiled_bf16", "packaged", "packaged_bf16"])
def test_decode_steps_of_padded_rows_match_the_eager_pass(graphs: str, request: pytest.FixtureRequest) -> None:
    """Rows of different lengths (left padding), from one to five rows: the logits of every decode step
    agree with the eager pass's (float32: to 1e-4 of their range; bfloat16: to 2^-5 of it, a few of
    its rounding steps), and pick the same greedy tokens (in bfloat16: wherever no near-tie makes that
    a matter of rounding)."""
    loaded: LoadedModel = request.getfixturevalue(graphs)
    assert loaded.forward.compiled.packaged == graphs.startswith("packaged")  # type: ignore[attr-defined]
    dtype = "bfloat16" if graphs.endswith("bf16") else "float32"
    vocab = loaded.model.config.vocab_size
    for lengths in ([9], [9, 4, 12], [3, 3, 7, 10, 5]):
        ids, mask = padded_batch(vocab, lengths)
        fast = lean_logits_stepwise(loaded.forward, ids, mask, prefill=2)  # type: ignore[arg-type]
        slow = lean_logits_stepwise(eager(loaded).forward, ids, mask, prefill=2)  # type: ignore[arg-type]
        real = mask.bool()
        scale = float(slow[real].abs().max()) * (1e-4 if dtype == "float32" else 2**-5)
        assert torch.allclose(fast[real].float(), slow[real].float(), atol=scale, rtol=0)
        # The same greedy token wherever the eager pass's best two are further apart than twice that
        # tolerance (float32: everywhere here; in bfloat16 a random tiny model has near-ties).
        top2 = slow[real].float().topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * scale
        assert dtype == "bfloat16" or bool(clear.all())
        assert torch.equal(fast[real].argmax(-1)[clear], slow[real].argmax(-1)[clear])


@pytest.mark.parametrize("graphs", ["compiled", "packaged"])
def test_served_greedy_tokens_are_the_eager_pass_tokens_alone_and_batched(
    graphs: str, request: pytest.FixtureRequest
) -> None:
    import asyncio

    compiled: LoadedModel = request.getfixturevalue(graphs)
    for batched in (False, True):
        assert asyncio.run(engine_greedy(compiled, batched=batched)) == asyncio.run(
            engine_greedy(eager(compiled), batched=batched)
        )


def _lanes(loaded: LoadedModel, lengths: list[int]) -> tuple[LaneGroup, torch.Tensor]:
    """Two lanes of one row each, prefilled with `lengths` tokens; the next token for each."""
    lean = loaded.forward
    lanes, first = [], 0
    generator = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        for length in lengths:
            cache = SlotCache(len(lean.layers), 1)  # type: ignore[attr-defined]
            cache.set_rows(1)
            prompt = torch.randint(3, loaded.model.config.vocab_size, (1, length), generator=generator)
            lean(prompt, torch.ones_like(prompt), torch.arange(length)[None], cache, keep=1)
            cache.advance(length)
            lanes.append(LaneStep(cache, first, 1, torch.ones(1, length + 1, dtype=torch.long)))
            first += 1
    return LaneGroup(lanes), torch.tensor([[5], [7]])


@pytest.mark.parametrize("graphs", ["compiled", "packaged"])
def test_a_lane_group_step_matches_the_eager_pass(graphs: str, request: pytest.FixtureRequest) -> None:
    """A long chat's lane beside a short one: each lane's rows attend over their own columns."""
    compiled: LoadedModel = request.getfixturevalue(graphs)
    lengths = [40, 6]
    group, tokens = _lanes(compiled, lengths)
    twin_group, _ = _lanes(compiled, lengths)
    positions = torch.tensor([[lengths[0]], [lengths[1]]])
    mask = torch.ones(2, 1, dtype=torch.long)  # unused with lanes: each lane brings its own
    with torch.inference_mode():
        fast = compiled.forward(tokens, mask, positions, group)
        slow = eager(compiled).forward(tokens, mask, positions, twin_group)
    assert torch.allclose(fast, slow, atol=float(slow.abs().max()) * 1e-4, rtol=0)
    for lane, twin in zip(group.lanes, twin_group.lanes, strict=True):  # the new column was written
        keys, twin_keys = lane.cache.layers[0].keys, twin.cache.layers[0].keys
        column = lane.cache.length
        assert keys[:1, :, column].abs().sum() > 0
        assert torch.allclose(keys[:1, :, column], twin_keys[:1, :, column], atol=1e-4)


@pytest.mark.parametrize("graphs", ["compiled_bf16", "packaged_bf16"])
def test_prompt_chunks_run_through_the_graph_where_that_pays(graphs: str, request: pytest.FixtureRequest) -> None:
    """In bfloat16 on a CPU with AMX, prompts run through the graph for many rows, each token a row:
    padded prompts' logits at every position and the keys written to the cache agree with the eager
    pass to bfloat16's rounding, without a compile or an eager fallback."""
    from torch._dynamo.utils import counters

    compiled_bf16: LoadedModel = request.getfixturevalue(graphs)

    lean = compiled_bf16.forward
    step = lean.compiled  # type: ignore[attr-defined]
    if not step.prefills:
        pytest.skip("prompts run through the graph only in bfloat16 on CPUs with AMX (`prefill_pays`)")
    graphs, fallbacks = counters["stats"]["unique_graphs"], lean._eager_steps  # type: ignore[attr-defined]
    vocab = compiled_bf16.model.config.vocab_size
    for lengths in ([9], [9, 4, 12], [3, 3, 7, 10, 5]):
        ids, mask = padded_batch(vocab, lengths)
        rows, width = ids.shape
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        caches = [SlotCache(len(lean.layers), rows) for _ in range(2)]  # type: ignore[attr-defined]
        with torch.inference_mode():
            for cache in caches:
                cache.set_rows(rows)
            fast = lean(ids, mask, positions, caches[0], keep=0)
            slow = eager(compiled_bf16).forward(ids, mask, positions, caches[1], keep=0)
        real = mask.bool()
        assert torch.allclose(fast[real].float(), slow[real].float(), atol=float(slow[real].abs().max()) * 2**-5)
        keys, twin_keys = (c.layers[-1].keys[:rows, :, :width].transpose(1, 2)[real].float() for c in caches)
        assert keys.abs().sum() > 0
        assert torch.allclose(keys, twin_keys, atol=float(twin_keys.abs().max()) * 2**-5)
    assert counters["stats"]["unique_graphs"] == graphs
    assert lean._eager_steps == fallbacks  # type: ignore[attr-defined]


def test_any_row_count_runs_without_compiling_again(compiled: LoadedModel) -> None:
    """Both graphs are compiled at load; rows and cache lengths that change every step reuse them."""
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    vocab = compiled.model.config.vocab_size
    for lengths in ([5], [5, 6], [2, 8, 4, 3, 9, 1, 6], [30] * 11):
        ids, mask = padded_batch(vocab, lengths)
        lean_logits_stepwise(compiled.forward, ids, mask, prefill=1)  # type: ignore[arg-type]
    assert counters["stats"]["unique_graphs"] == graphs


def test_compiling_keeps_no_copy_of_the_compiler_cache_in_memory(
    compiled: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch records every compiler cache entry it loads, as bytes, for
    `torch.compiler.save_cache_artifacts` (133 MB for the embedded model's graphs, read from the cache
    at every start). `warm` keeps none of what was recorded while it compiled (here one entry, recorded
    as inductor does when it loads a graph: this process's compiles miss the cache), and a step still
    runs through the graphs it compiled."""
    CacheArtifactManager.clear()
    run = CompiledDecode._run

    def loading_from_the_cache(self: CompiledDecode, *args: object, **kwargs: object) -> torch.Tensor:
        CacheArtifactRecorder(InductorCacheArtifact.type(), f"graph-{len(args)}").record(bytes(1 << 20))
        return run(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(CompiledDecode, "_run", loading_from_the_cache)
    step = CompiledDecode(compiled.forward)  # type: ignore[arg-type]
    step.warm()
    assert not CacheArtifactManager.need_serialize()
    assert torch.compiler.save_cache_artifacts() is None
    monkeypatch.undo()
    vocab = compiled.model.config.vocab_size
    ids, mask = padded_batch(vocab, [4, 6])
    lean = eager(compiled).forward
    lean.compiled = step  # type: ignore[attr-defined]
    fast = lean_logits_stepwise(lean, ids, mask, prefill=3)  # type: ignore[arg-type]
    slow = lean_logits_stepwise(eager(compiled).forward, ids, mask, prefill=3)  # type: ignore[arg-type]
    real = mask.bool()
    assert torch.allclose(fast[real], slow[real], atol=float(slow[real].abs().max()) * 1e-4, rtol=0)


def test_the_compiled_step_applies_only_where_it_can_run(
    compiled: LoadedModel, tiny_llama: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean = compiled.forward
    assert unavailable(lean) is None  # type: ignore[arg-type]
    assert unavailable(tiny_llama.forward) == "projections without 4-bit weights"  # type: ignore[arg-type]
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert unavailable(lean) == "no C++ compiler (g++, c++ or clang++) on PATH"  # type: ignore[arg-type]
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert unavailable(lean) == "a CPU without AVX-512"  # type: ignore[arg-type]
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert unavailable(lean) == "the aarch64 architecture (inductor's 4-bit GEMM is x86 only)"  # type: ignore[arg-type]


def test_the_loader_keeps_the_eager_pass_when_compiling_is_off_or_fails(
    compiled: LoadedModel,
    tiny_llama_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = tiny_llama_settings.model_copy(
        update={"dtype": "bfloat16", "quantize": "int4", "decode_packages": False}
    )
    off = load_model(settings.model_copy(update={"compile_decode": False}))
    assert off.forward.compiled is None  # type: ignore[attr-defined]

    def broken(self: CompiledDecode, threads: tuple[int, ...] = ()) -> None:
        raise RuntimeError("the compiler is broken")

    monkeypatch.setattr(compiled_decode.CompiledDecode, "warm", broken)
    with caplog.at_level("WARNING", logger=loader.log.name):
        failed = load_model(settings)
    assert failed.forward.compiled is None  # type: ignore[attr-defined]
    assert "compiling the decode step failed: the compiler is broken" in caplog.text


def last_step_logits(loaded: LoadedModel, lengths: list[int]) -> torch.Tensor:
    """The logits of the last decode step of padded rows of `lengths` tokens."""
    vocab = loaded.model.config.vocab_size
    ids, mask = padded_batch(vocab, lengths)
    return lean_logits_stepwise(loaded.forward, ids, mask, prefill=ids.shape[1] - 1)[:, -1]  # type: ignore[arg-type]


def test_a_team_the_governor_shrank_still_runs_the_compiled_graphs(
    compiled: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    """torch's compiler guards on the thread count: with the governor on (the default), the graphs are
    compiled for the whole team and for one thread, so a team it shrank runs them without a compile or
    an eager fallback, and keeps its size."""
    step = compiled.forward.compiled  # type: ignore[attr-defined]
    before = torch.get_num_threads()
    assert step.thread_counts == ((1, before) if before > 1 else (1,))
    try:
        torch.set_num_threads(1)
        with caplog.at_level("DEBUG", logger="pibloom.engine.llama_forward"):
            for lengths in ([4], [4, 7]):
                fast = last_step_logits(compiled, lengths)
                assert torch.allclose(
                    fast, last_step_logits(eager(compiled), lengths), atol=float(fast.abs().max()) * 1e-4
                )
                assert torch.get_num_threads() == 1
        assert "eagerly" not in caplog.text
    finally:
        torch.set_num_threads(before)


def test_a_step_outside_both_graphs_runs_eagerly_with_one_warning(
    compiled: LoadedModel, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinned to a thread count it was not compiled at, the graphs do not cover the step: it is computed
    by the eager pass (same logits), the cache written once, and the warning is not repeated."""
    step = compiled.forward.compiled  # type: ignore[attr-defined]
    monkeypatch.setattr(step, "thread_counts", (torch.get_num_threads() + 1,))
    monkeypatch.setattr(compiled.forward, "_eager_steps", 0)
    before = torch.get_num_threads()
    with caplog.at_level("WARNING", logger="pibloom.engine.llama_forward"):
        for lengths in ([4], [4, 7], [5, 2, 6]):
            fast = last_step_logits(compiled, lengths)
            assert torch.allclose(fast, last_step_logits(eager(compiled), lengths), atol=float(fast.abs().max()) * 1e-4)
    assert torch.get_num_threads() == before
    warnings = [r for r in caplog.records if "do not cover it" in r.getMessage()]
    assert len(warnings) == 1 and compiled.forward._eager_steps == 3  # type: ignore[attr-defined]


def test_a_team_between_the_compiled_counts_runs_at_the_nearest_below(compiled: LoadedModel) -> None:
    step = compiled.forward.compiled  # type: ignore[attr-defined]
    step_counts = step.thread_counts
    try:
        step.thread_counts = (1, 4)
        assert [step._threads_for(n) for n in (1, 2, 3, 4, 8)] == [1, 1, 1, 4, 4]
        step.thread_counts = (2,)
        assert step._threads_for(1) == 2  # none below: the least
    finally:
        step.thread_counts = step_counts
