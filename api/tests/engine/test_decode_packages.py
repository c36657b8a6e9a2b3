"""The decode graphs as packages built ahead of time in a child process (`decode_packages`): loaded
again without building or compiling, run on the lean pass's own 4-bit weights, at any team size, and
left for in-process compiling whenever they cannot be had. (That they compute what the eager pass
computes is checked beside the in-process graphs, in test_compiled_decode.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from test_checkpoint import heavy_imports_of_a_load
from test_compiled_decode import last_step_logits, load_compiled

from pibloom.engine import decode_packages, int4_blocked, loader
from pibloom.engine.compiled_decode import CompiledDecode, prefill_pays
from pibloom.engine.decode_packages import PackageError
from pibloom.engine.loader import LoadedModel, load_model
from pibloom.settings import Settings


@pytest.fixture(scope="module")
def packaged(tiny_llama_settings: Settings) -> LoadedModel:
    return load_compiled(tiny_llama_settings, "float32", packages=True)


def test_a_second_load_runs_the_stored_packages_without_building_or_compiling(
    packaged: LoadedModel, tiny_llama_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("built or compiled again")

    monkeypatch.setattr(decode_packages, "build_in_child", refuse)
    monkeypatch.setattr(CompiledDecode, "warm", refuse)
    again = load_compiled(tiny_llama_settings, "float32", packages=True)
    assert again.forward.compiled.packaged  # type: ignore[attr-defined]
    assert torch.equal(last_step_logits(again, [5, 9]), last_step_logits(packaged, [5, 9]))


def test_a_worker_that_runs_packages_imports_no_compiler(packaged: LoadedModel, tiny_llama_settings: Settings) -> None:
    """Loading the stored packages and serving requests with them, as a served worker does, imports
    neither torch's compiler nor transformers' model classes (dynamo alone, which a `custom_op`'s
    every call imported, was 74 MB resident in the served worker)."""
    settings = tiny_llama_settings.model_copy(update={"dtype": "float32", "quantize": "int4", "decode_packages": True})
    assert heavy_imports_of_a_load(settings) == (True, [])


def test_the_one_row_package_reads_the_lean_pass_weights_in_place(packaged: LoadedModel) -> None:
    """No second copy of the 4-bit projections for one row: the package computes with the lean pass's
    own tensors (scaling one of them changes its output, and restoring it restores the output)."""
    scales = packaged.forward.int4_layers[0]["qkv"].scales_zeros  # type: ignore[attr-defined]
    before = last_step_logits(packaged, [6])
    with torch.inference_mode():
        scales.mul_(2)
    try:
        assert not torch.allclose(last_step_logits(packaged, [6]), before)
    finally:
        with torch.inference_mode():
            scales.div_(2)
    assert torch.equal(last_step_logits(packaged, [6]), before)


def test_with_amx_the_worker_holds_the_projections_once(tiny_llama_settings: Settings) -> None:
    """Where the many-row graph re-blocks the 4-bit weights for its AMX GEMM (bfloat16 on a CPU with
    AMX), the lean pass and the one-row graph compute with the many-row graph's own weights and scales,
    through piBLOOM's kernel for that layout: one copy of the projections, read by all three (scaling
    one shared tensor moves the one-row and the many-row logits alike, and restoring it restores them)."""
    loaded = load_compiled(tiny_llama_settings, "bfloat16", packages=True)
    lean = loaded.forward
    if not prefill_pays(lean) or int4_blocked.unavailable() is not None:  # type: ignore[arg-type]
        pytest.skip("no AMX GEMM here: the many-row graph reads torch's layout")
    many = lean.compiled.compiled.many  # type: ignore[attr-defined]
    held = {tensor.data_ptr() for tensor in many.runner.extract_constants_map(False).values()}
    linears = [linear for layer in lean.int4_layers for linear in layer.values()]  # type: ignore[attr-defined]
    assert all(linear.blocked for linear in linears)
    assert all(linear.packed.data_ptr() in held and linear.scales_zeros.data_ptr() in held for linear in linears)
    one, batch = last_step_logits(loaded, [6]), last_step_logits(loaded, [6, 3])
    assert torch.allclose(one[0].float(), batch[0].float(), atol=float(one.abs().max()) * 2**-5, rtol=0)
    scales = linears[0].scales_zeros
    with torch.inference_mode():
        scales.mul_(2)
    try:
        assert not torch.allclose(last_step_logits(loaded, [6]), one)
        assert not torch.allclose(last_step_logits(loaded, [6, 3]), batch)
    finally:
        with torch.inference_mode():
            scales.div_(2)
    assert torch.equal(last_step_logits(loaded, [6]), one)


def test_one_set_of_packages_serves_a_team_of_one(packaged: LoadedModel) -> None:
    """The governor's team of one runs the packages built for the whole team: the same logits, no
    eager fallback, and the team keeps the size the governor gave it."""
    before = torch.get_num_threads()
    whole = [last_step_logits(packaged, lengths) for lengths in ([4], [4, 7, 2])]
    fallbacks = packaged.forward._eager_steps  # type: ignore[attr-defined]
    try:
        torch.set_num_threads(1)
        alone = [last_step_logits(packaged, lengths) for lengths in ([4], [4, 7, 2])]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for a, b in zip(whole, alone, strict=True):
        assert torch.allclose(a, b, atol=float(a.abs().max()) * 1e-5, rtol=0)
    assert packaged.forward._eager_steps == fallbacks  # type: ignore[attr-defined]


def test_packages_are_found_by_the_weights_they_were_built_for(packaged: LoadedModel) -> None:
    lean = packaged.forward
    known = decode_packages.fingerprint(lean)  # type: ignore[arg-type]
    norm = lean.final_norm  # type: ignore[attr-defined]
    with torch.inference_mode():
        norm.add_(1)
    try:
        assert decode_packages.fingerprint(lean) != known  # type: ignore[arg-type]
    finally:
        with torch.inference_mode():
            norm.sub_(1)
    assert decode_packages.fingerprint(lean) == known  # type: ignore[arg-type]


def test_without_packages_the_step_is_compiled_in_process(
    tiny_llama_settings: Settings,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A build that fails leaves the server what it had before packages: the graphs compiled here (the
    compile itself is stopped at its start: test_compiled_decode covers it, and each compile of the
    stack adds to the entries torch's compiler keeps for it in this process, up to a limit)."""
    asked: list[tuple[int, ...]] = []

    def broken(*args: object, **kwargs: object) -> float:
        raise PackageError("building the decode packages failed: no room")

    def warm(self: CompiledDecode, threads: tuple[int, ...] = ()) -> None:
        asked.append(threads)
        raise RuntimeError("stopped here")

    monkeypatch.setattr(decode_packages, "build_in_child", broken)
    monkeypatch.setattr(CompiledDecode, "warm", warm)
    settings = tiny_llama_settings.model_copy(
        update={"cache_dir": tmp_path_factory.mktemp("empty-cache"), "quantize": "int4", "decode_packages": True}
    )
    with caplog.at_level("WARNING", logger=loader.log.name):
        loaded = load_model(settings)
    assert loaded.forward.compiled is None  # type: ignore[attr-defined]
    assert asked, "the loader did not go on to compile in process"
    assert "compiling in process instead: building the decode packages failed: no room" in caplog.text


def test_the_child_refuses_a_model_without_a_compiled_step(
    tiny_llama_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Projections without 4-bit weights have no graphs to build: the child says so, nothing is left."""
    where = tmp_path_factory.mktemp("cache") / "decode-packages" / "x"
    settings = tiny_llama_settings.model_copy(update={"quantize": "none"})
    with pytest.raises(PackageError, match="no compiled decode step for this model here"):
        decode_packages.build_in_child(settings, where)
    assert not where.exists()


def test_a_damaged_package_is_refused_not_loaded(
    packaged: LoadedModel, tiny_llama_settings: Settings, tmp_path: Path
) -> None:
    """A package folder missing its library is a `PackageError` (the loader then compiles in process),
    never a failed start."""
    lean = packaged.forward
    cache = decode_packages.folder(loader.cache_root(tiny_llama_settings), lean)  # type: ignore[arg-type]
    damaged = tmp_path / "damaged"
    shutil.copytree(cache, damaged)
    next((damaged / "many").rglob("*.wrapper.so")).unlink()
    with pytest.raises(PackageError, match="cannot load the packages"):
        decode_packages.load(damaged, lean)  # type: ignore[arg-type]
