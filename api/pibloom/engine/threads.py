"""How many threads torch computes with, chosen by watching the inference thread.

torch's OpenMP threads are fastest spinning between operations while they have the cores to
themselves: on the embedded model, two spinning threads served one stream at 74 tok/s where they
slept between operations at 38, and 16 streams at 361 against 242. But a spinning team loses its
cores to any other busy process, and then every operation waits for a descheduled member: with one
CPU-bound process beside it, the same server fell to 18 and 141 tok/s. One thread has no team to
wait for: 58 and 263 alone, 55 and 258 beside that process (all measured on 2 cores, served).

So the team shrinks while the inference thread is not getting its core. Each window of engine work,
the thread's CPU time is compared with the wall time it took; when others keep it waiting (below
`busy` of the window), the team loses a thread. With fewer threads than cores, a probe puts one back
after `probe_s` of work: kept when the thread then gets its core, undone otherwise, and the next probe
waits twice as long (up to `max_probe_s`), so a lasting neighbour costs a short window now and then.

Some neighbours are the process's own: the first structured-output request builds llguidance's view
of the vocabulary on another thread (most of a core for about a second). The team shrinks for it as
for any neighbour, and `neighbour_left` then probes at once instead of after `probe_s`: waiting cost
the first batch with a constrained row 0.64x of its speed (5.0 against 3.2 s, measured).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from ..settings import Settings

log = logging.getLogger(__name__)
_own = threading.local()  # per thread: seconds spent waiting on the process's own work elsewhere


@contextlib.contextmanager
def waiting_on_own_work() -> Iterator[None]:
    """The calling thread blocks on work this process runs on threads of its own (llguidance's grammar
    masks). Its CPU time then lags its wall time by choice, not because a neighbour holds its core:
    `own_waits` reports that lag, and the engine leaves it out of what the governor sees. Counted in,
    sixteen constrained rows looked like a busy neighbour (most windows about 80% of a core, some
    under the 75% line), so the team fell to one thread and probes back failed: all rows constrained
    ran at 0.61-0.89x of none, 0.70x in one full bench (measured)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        waited = (time.perf_counter() - wall) - (time.thread_time() - cpu)
        _own.seconds = getattr(_own, "seconds", 0.0) + max(waited, 0.0)


def own_waits() -> float:
    """Seconds the calling thread has spent in `waiting_on_own_work` since it last asked."""
    seconds: float = getattr(_own, "seconds", 0.0)
    _own.seconds = 0.0
    return seconds


def governed(settings: Settings, most: int) -> bool:
    """Whether a governor sizes the team: on (`PIBLOOM_ADAPTIVE_THREADS`), no count fixed by the
    operator (`PIBLOOM_THREADS`), and more than one thread to give up."""
    return settings.adaptive_threads and not settings.threads and most > 1


class ThreadGovernor:
    def __init__(
        self,
        most: int,
        set_threads: Callable[[int], None],
        *,
        window_s: float = 0.5,
        busy: float = 0.75,
        probe_s: float = 5.0,
        max_probe_s: float = 80.0,
    ) -> None:
        if most < 1:
            raise ValueError(f"most must be at least 1, not {most}")
        self.most = self.threads = most
        self._set_threads = set_threads
        self.window_s, self.busy = window_s, busy
        self.probe_s, self.max_probe_s = probe_s, max_probe_s
        self._wait = probe_s  # engine work before the next probe
        self._since_change = 0.0
        self._probing = False
        self._probe_now = False  # set from another thread by `neighbour_left`
        self._wall = self._cpu = 0.0

    def neighbour_left(self) -> None:
        """Work beside the engine that the process knows of has ended: the next window probes, with a
        failed probe's wait back at `probe_s`."""
        self._probe_now = True

    def record(self, wall_s: float, cpu_s: float) -> None:
        """One iteration of engine work: its wall time and the inference thread's CPU time in it."""
        self._wall += wall_s
        self._cpu += cpu_s
        self._since_change += wall_s
        if self._wall < self.window_s:
            return
        share = self._cpu / self._wall
        self._wall = self._cpu = 0.0
        if share < self.busy and self.threads > 1:
            if self._probing:  # the thread put back did not get a core: the next probe waits longer
                self._wait = min(self._wait * 2, self.max_probe_s)
            self._change(self.threads - 1, share)
        elif self._probing:  # the probe held: the next one comes at the base interval
            self._wait = self.probe_s
            self._probing = False
        elif self.threads < self.most and (self._since_change >= self._wait or self._probe_now):
            if self._probe_now:
                self._probe_now, self._wait = False, self.probe_s
            self._probing = True
            self._change(self.threads + 1, share)

    def _change(self, threads: int, share: float) -> None:
        # Probes and their undoing are routine under a lasting neighbour: only the first drop is news.
        quiet = self._probing or threads > self.threads
        if threads < self.threads:
            self._probing = False
        (log.debug if quiet else log.info)(
            "inference thread got %.0f%% of a core: computing with %d thread(s) instead of %d",
            share * 100,
            threads,
            self.threads,
        )
        self.threads = threads
        self._since_change = 0.0
        self._set_threads(threads)
