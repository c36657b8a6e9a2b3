"""Find llama.cpp's `llama-server`, or build it once into the cache from the `llama-cpp-python` sdist.

The sdist vendors the llama.cpp sources, and PyPI is reachable where GitHub may not be, so it is the
one source the bench can count on. The build is cached in `$PIBLOOM_CACHE_DIR/llama.cpp/bin`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

BINARY = "llama-server"
SDIST = "llama-cpp-python"


class LlamaBuildError(RuntimeError):
    """llama-server could not be found or built; the message says why."""


def cache_root(cache_dir: Path) -> Path:
    return cache_dir / "llama.cpp"


def cached_binary(cache_dir: Path) -> Path:
    return cache_root(cache_dir) / "bin" / BINARY


def find_llama_server(cache_dir: Path) -> Path | None:
    """`llama-server` on PATH first (a user's own build), else the cached build, else None."""
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path)
    cached = cached_binary(cache_dir)
    return cached if cached.is_file() and os.access(cached, os.X_OK) else None


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise LlamaBuildError(f"`{cmd[0]} {cmd[1] if len(cmd) > 1 else ''}` failed (log: {log}):\n{tail}")


def _sdist(root: Path, log: Path) -> Path:
    found = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    if found:
        return found[-1]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(root), SDIST]
    _run(pip, log)
    found = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    if not found:
        raise LlamaBuildError(f"pip downloaded no {SDIST} sdist into {root}")
    return found[-1]


def _extract(sdist: Path, dest: Path) -> Path:
    """Extract only the vendored llama.cpp tree; return its folder."""
    prefix = sdist.name.removesuffix(".tar.gz") + "/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise LlamaBuildError(f"{sdist.name} has no vendor/llama.cpp sources")
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix.rstrip("/")


def build_llama_server(cache_dir: Path, jobs: int = 2, echo: Callable[[str], None] = print) -> Path:
    """Build `llama-server` (CPU, native flags, static) into the cache and return its path."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LlamaBuildError(f"cannot build {BINARY}: `{tool}` is not installed (apt-get install cmake g++)")
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    log = root / "build.log"
    echo(f"building {BINARY} from the {SDIST} sdist into {root} (a few minutes; log: {log})")
    sdist = _sdist(root, log)
    sources = _extract(sdist, root / "src")
    build = root / "build"
    configure = [
        "cmake", "-S", str(sources), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_SERVER=ON", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
    ]  # fmt: skip
    _run(configure, log)
    _run(["cmake", "--build", str(build), "--target", BINARY, "-j", str(jobs)], log)
    built = next((p for p in build.rglob(BINARY) if p.is_file() and os.access(p, os.X_OK)), None)
    if built is None:
        raise LlamaBuildError(f"the build finished but produced no {BINARY} (log: {log})")
    target = cached_binary(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, target)
    # The sdist, sources and objects are large and no longer needed once the binary is cached.
    shutil.rmtree(build, ignore_errors=True)
    shutil.rmtree(root / "src", ignore_errors=True)
    sdist.unlink(missing_ok=True)
    return target


def ensure_llama_server(cache_dir: Path, build: bool = True, echo: Callable[[str], None] = print) -> Path:
    """The path of a usable `llama-server`; builds it when missing and `build` is set."""
    found = find_llama_server(cache_dir)
    if found is not None:
        return found
    if not build:
        raise LlamaBuildError(f"{BINARY} is not on PATH nor in {cache_root(cache_dir)}")
    return build_llama_server(cache_dir, echo=echo)
