"""What the engine's choices need to know of the CPU: whether it is x86-64, and its feature flags."""

from __future__ import annotations

import platform

_X86_64 = frozenset({"x86_64", "amd64"})


def x86_64() -> bool:
    """Whether this machine is x86-64 (as it reports itself: an arm64 container under qemu-user says
    aarch64, though its /proc/cpuinfo is the x86 host's)."""
    return platform.machine().lower() in _X86_64


def flags() -> str:
    """The CPU's feature flags as /proc/cpuinfo lists them ("flags" on x86, "Features" on Arm); empty
    where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return ""
