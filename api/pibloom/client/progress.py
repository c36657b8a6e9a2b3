"""The progress bar (tqdm: count, rate and ETA) with running ok / failed / retry counts."""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm

from .models import Row


class Progress:
    def __init__(self, total: int, *, skipped: int = 0, enabled: bool | None = None, file: IO[str] | None = None):
        self.ok = 0
        self.failed = 0
        self.retries = 0
        # enabled=None: only when stderr is a terminal, so logs and pipes stay clean.
        self._bar = tqdm(
            total=total - skipped,
            desc="batch" + (f" (skipped {skipped} done)" if skipped else ""),
            unit="item",
            dynamic_ncols=True,
            file=file or sys.stderr,
            disable=None if enabled is None else not enabled,
        )

    def update(self, row: Row) -> None:
        if row.error is None:
            self.ok += 1
        else:
            self.failed += 1
        self.retries += max(row.attempts - 1, 0)
        # A dict keeps this order; keyword arguments would be sorted.
        self._bar.set_postfix({"ok": self.ok, "failed": self.failed, "retries": self.retries}, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()
