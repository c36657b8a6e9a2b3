"""How torch's OpenMP threads wait between operations.

libgomp reads its environment once, when torch loads it, so this runs before anything imports torch
(`pibloom serve` calls it first). Spinning threads collapse throughput (~10x, measured) as soon as
anything else wants a core (nginx, node, a second replica on a Pi); passive waiting costs ~25-35% on
an idle host. So spinning is opt-in (PIBLOOM_OMP_SPIN), and an operator's own OMP_WAIT_POLICY or
GOMP_SPINCOUNT wins over the passive default.
"""

from __future__ import annotations

from collections.abc import MutableMapping

from ..settings import Settings

SPIN_COUNT = "10000"  # long enough to bridge the gaps between a step's operations, short when idle


def configure(settings: Settings, environ: MutableMapping[str, str]) -> None:
    if settings.omp_spin:
        environ.pop("OMP_WAIT_POLICY", None)  # PASSIVE (the Makefile's default) would override the count
        environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    elif "GOMP_SPINCOUNT" not in environ:
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
