"""Finding llama-server: PATH first, then the cached build; a clear error when neither and no build."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pibloom.bench import llamacpp
from pibloom.bench.llamacpp import LlamaBuildError, _extract, cached_binary, ensure_llama_server, find_llama_server


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_path_wins_over_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_llama_server(cache) is None
    built = executable(cached_binary(cache))
    (built.parent / "BUILD").write_text(llamacpp.build_stamp(llamacpp.host_cpu_options()))
    assert built == cache / "llama.cpp" / "bin" / "llama-server"
    assert find_llama_server(cache) == built
    own = executable(tmp_path / "bin" / "llama-server")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{tmp_path / 'empty'}")
    assert find_llama_server(cache) == own


def test_no_build_means_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LlamaBuildError, match=r"llama-server is not on PATH nor in .*llama\.cpp"):
        ensure_llama_server(tmp_path, build=False)


def test_build_without_cmake_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(LlamaBuildError, match=r"`cmake` is not installed"):
        ensure_llama_server(tmp_path, build=True, echo=lambda _: None)


def sdist(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_takes_only_the_vendored_sources(tmp_path: Path) -> None:
    archive = sdist(
        tmp_path / "llama_cpp_python-9.9.9.tar.gz",
        {
            "llama_cpp_python-9.9.9/pyproject.toml": b"[project]\n",
            "llama_cpp_python-9.9.9/vendor/llama.cpp/CMakeLists.txt": b"project(llama)\n",
        },
    )
    root = _extract(archive, tmp_path / "src")
    assert (root / "CMakeLists.txt").read_text() == "project(llama)\n"
    assert not (tmp_path / "src" / "llama_cpp_python-9.9.9" / "pyproject.toml").exists()
    empty = sdist(tmp_path / "llama_cpp_python-0.0.1.tar.gz", {"llama_cpp_python-0.0.1/setup.py": b""})
    with pytest.raises(LlamaBuildError, match=r"no vendor/llama\.cpp"):
        _extract(empty, tmp_path / "src2")


def test_a_cached_sdist_is_not_downloaded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = sdist(tmp_path / f"llama_cpp_python-{llamacpp.SDIST_VERSION}.tar.gz", {"x": b""})
    monkeypatch.setattr(llamacpp, "SDIST_SHA256", llamacpp.sha256(archive))
    assert llamacpp._sdist(tmp_path, tmp_path / "build.log") == archive
    assert not (tmp_path / "build.log").exists()  # nothing was run


XEON_FLAGS = {"avx", "avx2", "fma", "f16c", "bmi2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8", "amx_bf16"}


def test_x86_builds_name_the_instruction_sets_and_leave_amx_off() -> None:
    options = llamacpp.ggml_cpu_options("x86_64", XEON_FLAGS)
    assert options[0] == "-DGGML_NATIVE=OFF"  # -march=native would switch AMX on regardless
    assert {"-DGGML_AVX2=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_FMA=ON"} <= set(options)
    assert {"-DGGML_AVX512_BF16=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX_VNNI=OFF"} <= set(options)
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(options)
    assert not any(o.startswith("-DGGML_AMX") and o.endswith("=ON") for o in options)
    assert llamacpp.ggml_cpu_options("aarch64", {"asimd", "sve"}) == ["-DGGML_NATIVE=ON"]


def test_cpu_flags_come_from_cpuinfo() -> None:
    info = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 amx_tile\n\nprocessor\t: 1\nflags\t: fpu\n"
    assert llamacpp.cpu_flags(info) == {"fpu", "avx2", "amx_tile"}
    assert llamacpp.cpu_flags("Features\t: fp asimd\n") == set()


def test_a_cached_build_with_another_stamp_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    built = executable(cached_binary(tmp_path))
    options = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF"]
    stamp = built.parent / "BUILD"
    assert find_llama_server(tmp_path, options) is None  # no stamp: an unpinned older build
    stamp.write_text(llamacpp.build_stamp(["-DGGML_NATIVE=ON"]) + "\n")
    assert find_llama_server(tmp_path, options) is None  # built with other flags
    stamp.write_text(llamacpp.build_stamp(options) + "\n")
    assert find_llama_server(tmp_path, options) == built
    assert "llama-cpp-python==0.3.36" in stamp.read_text()


def test_the_pinned_sdist_must_match_its_hash(tmp_path: Path) -> None:
    archive = tmp_path / f"llama_cpp_python-{llamacpp.SDIST_VERSION}.tar.gz"
    archive.write_bytes(b"not the release")
    with pytest.raises(LlamaBuildError, match=r"has sha256 [0-9a-f]{64}, expected 832db069"):
        llamacpp._sdist(tmp_path, tmp_path / "build.log")
    assert not archive.exists()  # a bad download is not kept for the next try
