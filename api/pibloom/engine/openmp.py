"""How torch's OpenMP threads wait between operations.

libgomp reads its environment once, when torch loads it, so this runs before anything imports torch
(`pibloom serve` calls it first). Spinning is the default: between the operations of a decode step it
saves the wake-up of every thread, 1.5-1.9x on the embedded model. It collapses when another process
takes a core, which `threads.ThreadGovernor` answers by shrinking the team. An operator's own
OMP_WAIT_POLICY or GOMP_SPINCOUNT stays as it is, unless PIBLOOM_OMP_SPIN is set explicitly.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from ..settings import Settings

SPIN_COUNT = "10000"  # long enough to bridge the gaps between a step's operations, short when idle


def configure(settings: Settings, environ: MutableMapping[str, str]) -> None:
    explicit = "omp_spin" in settings.model_fields_set
    if not explicit and ("OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ):
        return
    if settings.omp_spin:
        environ.pop("OMP_WAIT_POLICY", None)  # PASSIVE (the Makefile's) would override the count
        environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    elif "GOMP_SPINCOUNT" not in environ:
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
