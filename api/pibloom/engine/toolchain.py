"""The C++ toolchain that native code built at load time needs: a compiler and torch's headers (inductor's
compiled decode step and piBLOOM's own kernels), and the build of those kernels as operator libraries."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from . import cpu

# at::vec's own implementation for each of torch's CPU capabilities the kernels are built for.
CAPABILITY_FLAGS = {
    "AVX512": "-DCPU_CAPABILITY_AVX512",
    "AMX": "-DCPU_CAPABILITY_AVX512",
    "AVX2": "-DCPU_CAPABILITY_AVX2",
}


def compiler() -> str | None:
    """The C++ compiler to use: `$CXX`, else the first of g++, c++ and clang++ on PATH."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def torch_root() -> Path:
    return Path(torch.__file__).parent


def missing() -> str | None:
    """None when native code can be built against this torch; otherwise what is missing."""
    if compiler() is None:
        return "no C++ compiler (g++, c++ or clang++) on PATH"
    if not (torch_root() / "include" / "ATen").is_dir():
        return "torch's C++ headers are missing"
    return None


def library_flags(defines: list[str]) -> list[str]:
    """Compiler flags for an operator library built on the machine it runs on, against this torch."""
    root = torch_root()
    return [
        *defines,
        "-O3",
        "-DNDEBUG",
        "-march=native",  # built where it runs, like inductor's kernels
        "-fopenmp",  # at::parallel_for shares torch's OpenMP team (torch's own libgomp, by the rpath)
        "-std=c++17",
        "-shared",
        "-fPIC",
        CAPABILITY_FLAGS[torch.backends.cpu.get_cpu_capability()],
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{root / 'include'}",
        f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
        f"-L{root / 'lib'}",
        f"-Wl,-rpath,{root / 'lib'}",
    ]


def library_path(directory: Path, stem: str, source: Path, flags: list[str]) -> Path:
    """Where a library lives: named by its source, the flags, the CPU's instruction set extensions and
    torch's version, so a change to any of them builds it anew (`-march=native`: a cache directory that
    moves to another CPU must not hand it a build that would stop on an illegal instruction)."""
    key = hashlib.sha256()
    key.update(source.read_bytes())
    key.update(" ".join(flags).encode())
    key.update(_cpu_features().encode())
    key.update(torch.__version__.encode())
    return directory / f"{stem}-{key.hexdigest()[:16]}.so"


def _cpu_features() -> str:
    """The CPU's instruction set extensions as a build sees them."""
    return cpu.flags() or platform.processor()


def build_library(source: Path, target: Path, flags: list[str]) -> None:
    """Compile `source` into `target`, whole or not at all (another process may build the same)."""
    command = compiler()
    assert command is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    argv = [command, *flags, str(source), "-o", str(partial), "-ltorch", "-ltorch_cpu", "-lc10"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode:
            raise RuntimeError(f"{command} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
