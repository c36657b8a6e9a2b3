"""Find llama.cpp's `llama-server`, or build it once into the cache from the `llama-cpp-python` sdist.

The sdist vendors the llama.cpp sources, and PyPI is reachable where GitHub may not be, so it is the
one source the bench can count on. The version is pinned and its sha256 checked, so every run measures
the same llama.cpp. The build is cached in `$PIBLOOM_CACHE_DIR/llama.cpp/bin`, with a stamp naming the
version and flags it was built with; a different stamp means a rebuild.

On x86 the build is not `-march=native`: on an AMX-capable Xeon the native build turns ggml's AMX
matmul on, which crashed with SIGSEGV in `ggml_backend_amx_mul_mat` here (llama-cpp-python 0.3.36).
The instruction sets the CPU has are switched on one by one instead, with AMX off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

BINARY = "llama-server"
SDIST = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
STAMP = "BUILD"
# /proc/cpuinfo flag -> ggml CMake option, for the x86 instruction sets ggml can use.
X86_OPTIONS = {
    "avx": "GGML_AVX",
    "avx2": "GGML_AVX2",
    "fma": "GGML_FMA",
    "f16c": "GGML_F16C",
    "bmi2": "GGML_BMI2",
    "avx_vnni": "GGML_AVX_VNNI",
    "avx512f": "GGML_AVX512",
    "avx512vbmi": "GGML_AVX512_VBMI",
    "avx512_vnni": "GGML_AVX512_VNNI",
    "avx512_bf16": "GGML_AVX512_BF16",
}
AMX_OFF = ("-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF")


class LlamaBuildError(RuntimeError):
    """llama-server could not be found or built; the message says why."""


def cache_root(cache_dir: Path) -> Path:
    return cache_dir / "llama.cpp"


def cached_binary(cache_dir: Path) -> Path:
    return cache_root(cache_dir) / "bin" / BINARY


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags of the first CPU in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def ggml_cpu_options(machine: str, flags: set[str]) -> list[str]:
    """CMake options for ggml's CPU backend: explicit x86 instruction sets with AMX off, native elsewhere."""
    if machine not in ("x86_64", "AMD64", "i686"):
        return ["-DGGML_NATIVE=ON"]
    chosen = [f"-D{option}={'ON' if flag in flags else 'OFF'}" for flag, option in X86_OPTIONS.items()]
    return ["-DGGML_NATIVE=OFF", *chosen, *AMX_OFF]


def host_cpu_options() -> list[str]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        cpuinfo = ""
    return ggml_cpu_options(platform.machine(), cpu_flags(cpuinfo))


def build_stamp(options: list[str]) -> str:
    """What a cached build was made from; a build with another stamp is stale."""
    return f"{SDIST}=={SDIST_VERSION} {' '.join(options)}"


def find_llama_server(cache_dir: Path, options: list[str] | None = None) -> Path | None:
    """`llama-server` on PATH first (a user's own build), else the cached build if current, else None."""
    on_path = shutil.which(BINARY)
    if on_path:
        return Path(on_path)
    cached = cached_binary(cache_dir)
    if not (cached.is_file() and os.access(cached, os.X_OK)):
        return None
    stamp = cached.parent / STAMP
    want = build_stamp(host_cpu_options() if options is None else options)
    current = stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == want
    return cached if current else None


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise LlamaBuildError(f"`{cmd[0]} {cmd[1] if len(cmd) > 1 else ''}` failed (log: {log}):\n{tail}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        for block in iter(lambda: data.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sdist(root: Path, log: Path) -> Path:
    """The pinned sdist, downloaded once and checked against its sha256."""
    archive = root / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
    if not archive.is_file():
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(root)]
        _run([*pip, f"{SDIST}=={SDIST_VERSION}"], log)
        if not archive.is_file():
            raise LlamaBuildError(f"pip downloaded no {archive.name} into {root}")
    got = sha256(archive)
    if got != SDIST_SHA256:
        archive.unlink()
        raise LlamaBuildError(f"{archive.name} has sha256 {got}, expected {SDIST_SHA256}: deleted it")
    return archive


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
    """Build `llama-server` (CPU, static, the host's instruction sets without AMX) into the cache."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise LlamaBuildError(f"cannot build {BINARY}: `{tool}` is not installed (apt-get install cmake g++)")
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    options = host_cpu_options()
    log = root / "build.log"
    echo(f"building {BINARY} from the {SDIST} sdist into {root} (a few minutes; log: {log})")
    sdist = _sdist(root, log)
    sources = _extract(sdist, root / "src")
    build = root / "build"
    configure = [
        "cmake", "-S", str(sources), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", *options,
    ]  # fmt: skip
    _run(configure, log)
    _run(["cmake", "--build", str(build), "--target", BINARY, "-j", str(jobs)], log)
    built = next((p for p in build.rglob(BINARY) if p.is_file() and os.access(p, os.X_OK)), None)
    if built is None:
        raise LlamaBuildError(f"the build finished but produced no {BINARY} (log: {log})")
    target = cached_binary(cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, target)
    (target.parent / STAMP).write_text(build_stamp(options) + "\n", encoding="utf-8")
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
