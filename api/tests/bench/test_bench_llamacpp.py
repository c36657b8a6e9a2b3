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


def test_a_cached_sdist_is_not_downloaded_again(tmp_path: Path) -> None:
    archive = sdist(tmp_path / "llama_cpp_python-1.0.0.tar.gz", {"x": b""})
    assert llamacpp._sdist(tmp_path, tmp_path / "build.log") == archive
    assert not (tmp_path / "build.log").exists()  # nothing was run
