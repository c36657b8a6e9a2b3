"""Memory under a long mixed load (issue 16, point 4): chats with prompts of 10 to 1,200 words, a
dozen at a time, for ten minutes, on a fresh server; the process tree's RSS is sampled throughout.

The figure is the RSS at the end over the RSS after the first minute: a server whose memory settles
(KV budget, bounded prefix cache, allocator arenas reused) stays near 1; one that leaks or keeps
growing buffers does not. Requests that failed (not those cut at the end) count as lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .conversations import conversation
from .load import LoadSpec, run_level
from .peers import RssSampler
from .stats import ratio

# Prompt lengths in words, in the order the requests cycle through them.
SOAK_WORDS = (10, 400, 40, 1200, 150, 800, 60, 250)
MAX_ERROR_SAMPLES = 3
SOAK_MINUTES = 10.0  # the ten minutes


def soak_prompts(words: tuple[int, ...] = SOAK_WORDS) -> tuple[str, ...]:
    """One prompt per length: the first `n` words of a different topic's notes, then a question."""
    prompts = []
    for seed, n in enumerate(words):
        text = " ".join(m["content"] for m in conversation(n, seed=seed + 3))
        prompts.append(" ".join(text.split()[:n]) + " Tell me more about this.")
    return tuple(prompts)


@dataclass(frozen=True)
class SoakSpec:
    minutes: float = SOAK_MINUTES
    streams: int = 12
    max_tokens: int = 128
    settle_s: float = 60.0  # RSS at this point is the reference
    sample_s: float = 2.0

    def __post_init__(self) -> None:
        if self.minutes * 60 <= self.settle_s or min(self.streams, self.max_tokens) < 1 or self.sample_s <= 0:
            raise ValueError(f"a soak needs streams, tokens, and to run past its settling time: {self}")


@dataclass
class SoakFigures:
    """RSS samples as (seconds since the load began, bytes), and what became of the requests."""

    peer: str
    minutes: float
    settle_s: float
    samples: list[tuple[float, int]] = field(default_factory=list)
    requests: int = 0
    completed: int = 0
    lost: int = 0
    error_samples: list[str] = field(default_factory=list)

    def rss_at(self, seconds: float) -> int | None:
        """The last sample taken at or before `seconds`."""
        before = [rss for t, rss in self.samples if t <= seconds]
        return before[-1] if before else None

    @property
    def rss_settled(self) -> int | None:
        return self.rss_at(self.settle_s)

    @property
    def rss_end(self) -> int | None:
        return self.samples[-1][1] if self.samples else None

    @property
    def rss_peak(self) -> int | None:
        return max((rss for _, rss in self.samples), default=None)

    @property
    def growth(self) -> float | None:
        """RSS at the end over RSS after the first minute."""
        return ratio(self.rss_end, self.rss_settled)


async def run_soak(base_url: str, model: str, peer: str, pid: int, spec: SoakSpec) -> SoakFigures:
    load = LoadSpec(
        concurrency=spec.streams,
        requests=10**9,  # as many as fit in the time: the deadline ends the load
        max_tokens=spec.max_tokens,
        deadline_s=spec.minutes * 60,
        api="chat",
        prompts=soak_prompts(),
    )
    with RssSampler(pid, interval=spec.sample_s) as rss:
        results = await run_level(base_url, model, load)
    lost = [r for r in results if r.error is not None]
    return SoakFigures(
        peer=peer,
        minutes=spec.minutes,
        settle_s=spec.settle_s,
        samples=rss.samples,
        requests=len(results),
        completed=sum(r.ok for r in results),
        lost=len(lost),
        error_samples=[str(r.error) for r in lost[:MAX_ERROR_SAMPLES]],
    )
