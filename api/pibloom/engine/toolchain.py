"""The C++ toolchain that native code built at load time needs: a compiler and torch's headers (inductor's
compiled decode step and piBLOOM's own attention kernel)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


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
