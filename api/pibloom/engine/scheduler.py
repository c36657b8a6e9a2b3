"""The inference engine: one model, one thread, continuous batching over every request.

The asyncio side submits `Request`s; the inference thread runs a loop of *iterations*. Each iteration
drops cancelled sequences, admits waiting requests while batch slots are free, spends a bounded token
budget on prefilling newcomers (so a long prompt never stalls the running streams for long), then
runs one decode step for the whole running batch. Finished sequences leave at once and their slot is
free for the next iteration.

Threads and the lock: `_cond` (a condition over one lock) guards what both sides touch: the waiting
queue, `accepting`, `_stopping`, and `_counts`, the sizes of the prefilling and running lists (and the
lanes in use) as the inference thread last published them. Those lists, the lanes' caches and every
`_Sequence` belong to the inference thread alone and are never read elsewhere. `Request.cancelled`
and `fatal_error` are single flags written by one side and polled by the other, so they need no lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..metrics import Metrics
from .detokenizer import IncrementalDecoder, StopMatcher
from .kv_cache import GrowingCache, LaneGroup, LaneStep, SlotCache, allocation_bound, longest_row
from .loader import LoadedModel
from .logits import RowShaper, accept_rows, needs_shaper, shape_rows
from .memory import kv_bytes_per_token, return_freed
from .prefix_cache import PrefixCache, PrefixHit
from .request import Event, FinishReason, Request, SamplingParams, TokenLogprob
from .sampling import argmax_only, make_generator, sample_batch, token_logprobs
from .threads import ThreadGovernor, own_waits

log = logging.getLogger(__name__)

# Leading padding columns tolerated before a lane is compacted to the left.
_COMPACT_MIN = 64
# Lanes: rows of very different lengths decode in separate slot caches (lean forward pass only).
MAX_LANES = 4
# A newcomer opens a new lane rather than add more than this many padding columns to an existing one
# (its own padding, or every row's when it is longer than the lane).
_LANE_WASTE = 256


class QueueFullError(RuntimeError):
    """No room to wait: the caller answers 503 with Retry-After."""


class TooLargeError(ValueError):
    """The request alone needs more KV cache than the engine may ever hold."""


class EngineStoppedError(RuntimeError):
    """The engine is draining or stopped and admits no new work."""


@dataclass
class _Sequence:
    request: Request
    generator: torch.Generator
    decoder: IncrementalDecoder
    stops: StopMatcher
    history: list[int]
    start: int = 0  # first cache column that belongs to this row (left of it: padding)
    next_token: int = -1  # sampled but not yet fed through the model
    prefill_cache: Any = None
    prefilled: int = 0
    logits: torch.Tensor | None = field(default=None, repr=False)
    prompt_lp: list[TokenLogprob] = field(default_factory=list)
    sent_prompt_logprobs: bool = False
    looked_up: bool = False  # the prefix cache was asked once, before the first prefill
    shaper: RowShaper | None = None  # penalties, logit bias, grammar: only for rows that ask
    choice: int = 0  # which of the request's n choices this row generates
    output_ids: list[int] = field(default_factory=list)


@dataclass
class _Lane:
    """Rows that share one column index: a slot cache and its sequences, row i being seqs[i]."""

    cache: SlotCache
    seqs: list[_Sequence] = field(default_factory=list)


def _waste(rows: int, length: int, size: int) -> int:
    """Padding columns added if a prompt of `size` tokens joined a lane of `rows` rows and `length`
    columns (its own padding, or every row's when it is longer)."""
    if not rows:
        return 0
    return length - size if size <= length else rows * (size - length)


def _choose_lane(shapes: list[tuple[int, int]], size: int) -> int:
    """Which lane (given as rows, length) a prompt of `size` tokens joins: the busy one it pads least;
    an empty one when every busy lane would take more than `_LANE_WASTE` padding columns (so a long
    chat does not slow the short ones). Admission's projection places requests the same way."""
    busy = [i for i, (rows, _) in enumerate(shapes) if rows]
    idle = [i for i, (rows, _) in enumerate(shapes) if not rows]
    best = min(busy, key=lambda i: _waste(*shapes[i], size), default=None)
    if best is None or (idle and _waste(*shapes[best], size) > _LANE_WASTE):
        return idle[0]
    return best


class Engine:
    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 32,
        max_queue: int = 64,
        prefill_chunk: int = 256,
        batching: bool = True,
        metrics: Metrics | None = None,
        prefix_cache_bytes: int = 0,
        kv_budget_bytes: int | None = None,
        threads: ThreadGovernor | None = None,
    ) -> None:
        """`threads`: sizes torch's thread team from the inference thread's share of a core (None: the
        team stays as it is)."""
        self.loaded = loaded
        self.threads = threads
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_rows = max_batch_size if batching else 1
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.metrics = metrics or Metrics()
        self.prefix_cache = PrefixCache(prefix_cache_bytes, metrics=self.metrics)
        # Admission keeps what the lanes' buffers may come to hold (`_fits`) within the budget; what
        # does not fit waits in the queue. None: no budget.
        per_token = self._per_token = kv_bytes_per_token(self.model.config, loaded.dtype)
        self.kv_budget_bytes = kv_budget_bytes
        # The longest sequence (prompt + max_tokens) the budget can hold alone, as its buffers grow.
        self.kv_budget_tokens = None if kv_budget_bytes is None else longest_row(kv_budget_bytes // per_token)
        if kv_budget_bytes is not None:
            self.metrics.kv_cache_budget.set(kv_budget_bytes)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Request] = collections.deque()
        self._prefilling: list[_Sequence] = []
        self._max_lanes = MAX_LANES if loaded.lean else 1  # transformers' forward takes one cache
        self._lanes = self._new_lanes()
        # (prefilling, running, busy lanes), published under `_cond` by the inference thread.
        self._counts = (0, 0, 0)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._trim_due = False  # work ran since the heap was last handed back (`memory.return_freed`)
        self.accepting = True
        self.fatal_error: str | None = None

    # ---------------------------------------------------------------- asyncio side

    def _new_lanes(self) -> list[_Lane]:
        return [_Lane(SlotCache(self._num_layers(), self.max_rows)) for _ in range(self._max_lanes)]

    @property
    def _running(self) -> list[_Sequence]:
        """Every decoding sequence, in batch order: lane after lane (inference thread only)."""
        return [seq for lane in self._lanes for seq in lane.seqs]

    @property
    def kv_bytes(self) -> int:
        """Memory held by the batch's slot caches (inference thread only)."""
        return sum(lane.cache.nbytes for lane in self._lanes)

    def _num_layers(self) -> int:
        config = self.model.config
        return int(getattr(config, "num_hidden_layers", None) or config.n_layer)

    def start(self) -> None:
        """Run the engine on a new thread."""
        self._thread = threading.Thread(target=self._run, name="pibloom-engine", daemon=True)
        self.metrics.engine_up.set(1)
        self._thread.start()

    def run(self, started: Callable[[], None] | None = None) -> None:
        """Run the engine on the calling thread (the one that loaded the model) until shut down;
        `started` is called once the engine is alive, before it takes work."""
        self._thread = threading.current_thread()
        self.metrics.engine_up.set(1)
        if started is not None:
            started()
        self._run()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.fatal_error is None

    @property
    def in_flight(self) -> int:
        with self._cond:
            return len(self._waiting) + self._busy

    def load(self) -> dict[str, int]:
        with self._cond:
            prefilling, running, lanes = self._counts
            return {"waiting": len(self._waiting), "prefilling": prefilling, "running": running, "lanes": lanes}

    @property
    def _busy(self) -> int:
        """Sequences in the batch or being prefilled (call under `_cond`)."""
        return self._counts[0] + self._counts[1]

    def _publish(self) -> None:
        """Make the inference thread's list sizes visible to the other side (call under `_cond`)."""
        lanes = sum(1 for lane in self._lanes if lane.seqs)
        self._counts = (len(self._prefilling), len(self._running), lanes)

    def submit(self, request: Request) -> None:
        with self._cond:
            if not self.accepting or not self.alive:
                raise EngineStoppedError("the server is shutting down")
            need = self._need(request)
            if self.kv_budget_bytes is not None and not self._fits_alone(request):
                raise TooLargeError(
                    f"this request may need {need} tokens of KV cache (prompt + max_tokens); this server holds "
                    f"at most {self.kv_budget_tokens} (PIBLOOM_KV_CACHE_MB): lower max_tokens or shorten the prompt"
                )
            free = self.max_rows - self._busy
            if len(self._waiting) >= self.max_queue + max(free, 0):
                self.metrics.rejected.labels("queue_full").inc()
                raise QueueFullError(f"server overloaded: {len(self._waiting)} requests already waiting")
            self._waiting.append(request)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify()

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Event]:
        """Submit a request and yield its events; leaving early (client gone) cancels it."""
        import asyncio

        request = Request(prompt_ids=prompt_ids, params=params, loop=asyncio.get_running_loop())
        self.submit(request)
        open_choices = params.n
        try:
            while True:
                event = await request.queue.get()
                yield event
                if event.finish_reason == "error":
                    return
                if event.finish_reason is not None:
                    open_choices -= 1
                    if not open_choices:
                        return
        finally:
            # Runs on normal end too; cancelling a finished request is a no-op for the engine.
            request.cancel()
            with self._cond:
                self._cond.notify()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is waiting or running (True), or `timeout` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._waiting or self._busy) or not self.alive, timeout)

    def stop_accepting(self) -> None:
        with self._cond:
            self.accepting = False

    def side_work_ended(self) -> None:
        """Work this process did beside the engine (a grammar's vocabulary built) has ended: the thread
        governor, which shrank the team for it, tries the whole team again at once (`neighbour_left`)."""
        if self.threads is not None:
            self.threads.neighbour_left()

    def shutdown(self, timeout: float | None = None) -> None:
        with self._cond:
            self.accepting = False
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self.metrics.engine_up.set(0)

    # ---------------------------------------------------------------- inference thread

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        self._publish()  # what the last iteration left
                        while not (self._waiting or self._busy or self._stopping):
                            self._cond.notify_all()  # wakes `wait_idle`
                            if not self._cond.wait(timeout=1.0) and self._trim_due:
                                # A second without work: what the last requests freed goes back to the
                                # system (~5 ms), not between the close requests of a burst.
                                self._trim_due = False
                                return_freed()
                        if self._stopping and not (self._waiting or self._busy):
                            return
                        self._drop_cancelled_waiting()
                        self._admit()
                        self._publish()
                    try:
                        self._trim_due = True
                        self._timed_iteration()
                    except Exception as exc:  # a bad batch must not take the thread down
                        log.exception("inference step failed")
                        self._fail_all(f"inference failed: {type(exc).__name__}")
        except BaseException as exc:
            self.fatal_error = repr(exc)
            self.metrics.engine_up.set(0)
            log.exception("inference thread died")
            # Nobody will serve these any more: answer them now instead of letting them hang.
            with self._cond:
                waiting, self._waiting = list(self._waiting), collections.deque()
            for request in waiting:
                request.emit(Event(text="", token_ids=[], finish_reason="error", error="the inference engine stopped"))
            self._fail_all("the inference engine stopped")
            with self._cond:
                self._publish()
                self._cond.notify_all()
            raise

    def _timed_iteration(self) -> None:
        if self.threads is None:
            self._iteration()
            return
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            self._iteration()
        finally:
            # Waits on the process's own threads (grammar masks) are not a neighbour holding the core.
            self.threads.record(time.perf_counter() - wall - own_waits(), time.thread_time() - cpu)

    def _drop_cancelled_waiting(self) -> None:
        if any(r.cancelled for r in self._waiting):
            kept = [r for r in self._waiting if not r.cancelled]
            for r in self._waiting:
                if r.cancelled:
                    self._count_finished(r, "cancelled")
            self._waiting = collections.deque(kept)
        self.metrics.queue_depth.set(len(self._waiting))

    def _need(self, request: Request) -> int:
        """Tokens of KV cache a request may come to hold: each of its n choices holds its own row."""
        if request.params.score_only:
            return len(request.prompt_ids)
        per_row = min(len(request.prompt_ids) + request.params.max_tokens, self.loaded.max_context)
        return per_row * request.params.n

    def _fits(self, request: Request) -> bool:
        """Whether the request fits the budget beside every admitted one: the lanes' buffers are
        projected to their largest, each lane holding its rows (and the prefilling requests', placed
        as `_lane_for` will place them) until its longest-running row may end, allocated as the slot
        cache grows (`allocation_bound`)."""
        if self.kv_budget_bytes is None:
            return True
        if not self._prefilling and not self._running:
            return True  # alone it fits (submit refuses what never could)
        return self._projected_slots(request) * self._per_token <= self.kv_budget_bytes

    def _fits_alone(self, request: Request) -> bool:
        """Whether the request's rows fit the budget with nothing else running (`submit` refuses it
        otherwise: it could never be served)."""
        assert self.kv_budget_bytes is not None
        if request.params.score_only:
            return len(request.prompt_ids) * self._per_token <= self.kv_budget_bytes
        per_row = self._need(request) // request.params.n
        slots = allocation_bound(request.params.n, per_row, self.max_rows)
        return slots * self._per_token <= self.kv_budget_bytes

    def _remaining(self, request: Request, generated: int) -> int:
        """Tokens a row may still add: up to max_tokens, within the model's context."""
        context_left = self.loaded.max_context - len(request.prompt_ids) - generated
        return max(0, min(request.params.max_tokens - generated, context_left))

    def _projected_slots(self, newcomer: Request) -> int:
        scored, lanes = self._project([newcomer])
        return scored + sum(allocation_bound(max(rows, held), final, self.max_rows) for rows, _, final, held in lanes)

    def _project(self, newcomers: list[Request]) -> tuple[int, list[list[int]]]:
        """The prefilling requests and `newcomers` placed in the lanes as `_lane_for` will place them:
        the prompt slots of scoring requests, and per lane [rows, length now, length when its last row
        may end, rows its buffers hold room for]."""
        lanes: list[list[int]] = []
        for lane in self._lanes:
            length = lane.cache.length
            final = max((length + self._remaining(s.request, len(s.output_ids)) for s in lane.seqs), default=0)
            lanes.append([len(lane.seqs), length if lane.seqs else 0, final, lane.cache.row_capacity])
        scored = 0
        for request in [s.request for s in self._prefilling] + newcomers:
            size, n = len(request.prompt_ids), request.params.n
            if request.params.score_only:  # its prefill cache only: it never joins a lane
                scored += size
                continue
            end = size + self._remaining(request, 0)
            lane = lanes[_choose_lane([(rows, length) for rows, length, _, _ in lanes], size)]
            rows, length, final, held = lane
            if not rows:
                lane[:] = [n, size, end, held]
                continue
            grown = max(length, size)
            lane[:] = [rows + n, grown, max(final + grown - length, end + grown - size), held]
        return scored, lanes

    def _rows_held(self) -> int:
        """Batch rows taken or promised: a request with n choices needs n rows once prefilled."""
        return len(self._running) + sum(s.request.params.n for s in self._prefilling)

    def _admit(self) -> None:
        while self._waiting and self._rows_held() + self._waiting[0].params.n <= self.max_rows:
            if not self._fits(self._waiting[0]):
                break  # first come, first served: it waits until running sequences free the memory
            request = self._waiting.popleft()
            request.admitted_at = time.perf_counter()
            try:
                seq = self._sequence(request, 0)
            except Exception as exc:  # e.g. a grammar the serving layer passed but cannot be built here
                log.exception("request %d cannot start", request.id)
                request.emit(Event(text="", token_ids=[], finish_reason="error", error=f"cannot start: {exc}"))
                continue
            self._prefilling.append(seq)
        self.metrics.queue_depth.set(len(self._waiting))

    def _sequence(self, request: Request, choice: int) -> _Sequence:
        """A row's own state; choice i of a seeded request samples with seed + i (reproducible per choice)."""
        params = request.params
        seed = None if params.seed is None else params.seed + choice
        shaper = None
        if needs_shaper(params):
            width = int(self.model.config.vocab_size)
            shaper = RowShaper(params, self.tokenizer, width, frozenset(self.loaded.eos_token_ids))
        return _Sequence(
            request=request,
            generator=make_generator(seed, self.loaded.device),
            decoder=IncrementalDecoder(self.tokenizer, request.prompt_ids[-4:]),
            stops=StopMatcher(params.stop + self.loaded.extra_stop),
            history=list(request.prompt_ids),
            shaper=shaper,
            choice=choice,
        )

    def _iteration(self) -> None:
        self._drop_cancelled_running()
        self._prefill_step()
        if self._running:
            self._decode_step()
        self.metrics.running.set(len(self._running))
        held = self.kv_bytes
        self.metrics.kv_cache_bytes.set(held)
        if self.kv_budget_bytes:
            self.metrics.kv_cache_usage.set(held / self.kv_budget_bytes)

    def _drop_cancelled_running(self) -> None:
        for seq in [s for s in self._prefilling if s.request.cancelled]:
            self._prefilling.remove(seq)
            self._count_finished(seq.request, "cancelled")
        for lane in self._lanes:
            gone = [i for i, s in enumerate(lane.seqs) if s.request.cancelled]
            if gone:
                for i in gone:
                    self._count_finished(lane.seqs[i].request, "cancelled")
                self._remove_rows(lane, gone)

    def _prefill_step(self) -> None:
        """Spend up to `prefill_chunk` prompt tokens: short prompts together in one padded forward
        pass, and at most one long (or logprob-hungry) prompt a chunk at a time."""
        budget = self.prefill_chunk
        group: list[_Sequence] = []
        chunked = False
        for seq in list(self._prefilling):
            if budget <= 0:
                break
            if not seq.looked_up:
                self._reuse_prefix(seq)
                if self._join_cached(seq):
                    continue
            remaining = len(seq.request.prompt_ids) - seq.prefilled
            whole = seq.prefilled == 0 and remaining <= budget and not seq.request.params.prompt_logprobs
            if whole:
                group.append(seq)
                budget -= remaining
            elif not chunked:
                chunked = True
                budget -= self._prefill_chunk(seq, budget)
        if group:
            self._prefill_group(group)

    def _reuse_prefix(self, seq: _Sequence) -> None:
        """Start the prefill where a cached prefix ends (the rest goes the chunked way)."""
        seq.looked_up = True
        params = seq.request.params
        if not self.prefix_cache.enabled or params.prompt_logprobs:
            return
        hit = self.prefix_cache.lookup(seq.request.prompt_ids)
        if hit is not None:
            seq.prefill_cache = self._seeded_cache(hit)
            seq.prefilled = hit.length

    def _join_cached(self, seq: _Sequence) -> bool:
        """A prompt cached but for its last token (a repeated prompt, a regenerated reply) joins the
        batch at once with that token as its next input: the next decode step computes it with the
        other rows, instead of a forward pass of its own for one token."""
        prompt, params = seq.request.prompt_ids, seq.request.params
        if seq.prefilled != len(prompt) - 1 or params.n != 1 or params.prompt_logprobs or params.score_only:
            return False
        self._prefill_done(seq)
        cache, seq.prefill_cache = seq.prefill_cache, None
        self._place(seq, cache, 0, seq.prefilled, prompt[-1])
        return True

    def _prefill_done(self, seq: _Sequence) -> None:
        """The whole prompt is in the sequence's cache: it leaves the prefilling list, its tokens counted."""
        self._prefilling.remove(seq)
        self.metrics.prompt_tokens.inc(len(seq.request.prompt_ids))

    def _seeded_cache(self, hit: PrefixHit) -> GrowingCache:
        cache = GrowingCache(self._num_layers())
        n = hit.length
        for layer, (keys, values) in enumerate(zip(hit.entry.keys, hit.entry.values, strict=True)):
            cache.update(keys[None, :, :n], values[None, :, :n], layer)
        return cache

    def _keep_prefix(self, lane: _Lane, row: int) -> None:
        """Offer a sequence that leaves the batch to the prefix cache: its prompt and the reply so far."""
        seq = lane.seqs[row]
        if not self.prefix_cache.enabled or seq.request.params.score_only:
            return
        columns = lane.cache.length - seq.start
        keys, values = lane.cache.row_kv(row, seq.start)
        self.prefix_cache.store(seq.history[:columns], keys, values)

    def _prefill_chunk(self, seq: _Sequence, budget: int) -> int:
        device = self.loaded.device
        prompt = seq.request.prompt_ids
        if seq.prefill_cache is None:
            seq.prefill_cache = GrowingCache(self._num_layers())
        start = seq.prefilled
        chunk = prompt[start : start + budget]
        end = start + len(chunk)
        ids = torch.tensor([chunk], dtype=torch.long, device=device)
        mask = torch.ones((1, end), dtype=torch.long, device=device)
        positions = torch.arange(start, end, device=device).unsqueeze(0)
        want_all = seq.request.params.prompt_logprobs
        logits = self.loaded.forward(ids, mask, positions, seq.prefill_cache, keep=0 if want_all else 1)[0]
        if want_all:
            # Position i predicts prompt token i + 1.
            targets = prompt[start + 1 : end + 1]
            if targets:
                top = seq.request.params.logprobs or 0
                target_ids = torch.tensor(targets, device=device)
                seq.prompt_lp.extend(token_logprobs(logits[: len(targets)], target_ids, top))
        seq.logits = logits[-1:]
        seq.prefilled = end
        if end == len(prompt):
            self._prefill_done(seq)
            if seq.request.params.score_only:
                self._finish_score(seq)
            else:
                self._join(seq, seq.prefill_cache, 0)
        return len(chunk)

    def _prefill_group(self, group: list[_Sequence]) -> None:
        device = self.loaded.device
        width = max(len(s.request.prompt_ids) for s in group)
        pad = self.loaded.pad_token_id
        rows = [[pad] * (width - len(s.request.prompt_ids)) + s.request.prompt_ids for s in group]
        ids = torch.tensor(rows, dtype=torch.long, device=device)
        lengths = torch.tensor([len(s.request.prompt_ids) for s in group], device=device)
        mask = (torch.arange(width, device=device).unsqueeze(0) >= (width - lengths).unsqueeze(1)).long()
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = GrowingCache(self._num_layers())
        logits = self.loaded.forward(ids, mask, positions, cache)
        for i, seq in enumerate(group):
            self._prefill_done(seq)
            seq.logits = logits[i]
            self._join(seq, cache, i)

    def _finish_score(self, seq: _Sequence) -> None:
        params = seq.request.params
        scored = seq.prompt_lp[max(params.score_from - 1, 0) :]
        seq.request.emit(Event(text="", token_ids=[], generated=0, prompt_logprobs=scored, finish_reason="stop"))
        self._count_finished(seq.request, "scored")

    def _join(self, seq: _Sequence, prefill_cache: Any, src_row: int) -> None:
        """Move the sequence into the batch, and with n > 1 its sibling choices too: every choice's row
        is a copy of the one prefilled prompt cache."""
        logits = seq.logits
        assert logits is not None
        seq.logits = None
        seq.prefill_cache = None
        n = seq.request.params.n
        for choice in [seq] + [self._sequence(seq.request, i) for i in range(1, n)]:
            choice.prompt_lp = seq.prompt_lp  # echo's prompt logprobs go with every choice
            self._join_row(choice, logits, prefill_cache, src_row)

    def _join_row(self, seq: _Sequence, logits: torch.Tensor, prefill_cache: Any, src_row: int) -> None:
        """Sample the first token from the prefill logits and give the sequence a row of the cache."""
        params = seq.request.params
        shaped = shape_rows(logits.view(1, -1), [seq.shaper])
        token = sample_batch(shaped, [params], [seq.generator], [seq.history])[0]
        accept_rows([token], [seq.shaper])
        lp = None
        if params.logprobs is not None:
            lp = token_logprobs(logits.view(1, -1), torch.tensor([token], device=logits.device), params.logprobs)[0]
        if self._emit(seq, token, lp):
            return
        self._place(seq, prefill_cache, src_row, len(seq.request.prompt_ids), token)

    def _place(self, seq: _Sequence, prefill_cache: Any, src_row: int, size: int, next_token: int) -> None:
        """Give the sequence a row of a lane holding the `size` columns of `src_row` of the prefill
        cache; `next_token` is what the next decode step feeds it."""
        lane = self._lane_for(size)
        cache = lane.cache
        if not lane.seqs:
            cache.reset(size)
        elif size > cache.length:
            grow = size - cache.length
            cache.shift(grow)
            for other in lane.seqs:
                other.start += grow
        # The rows still prefilling that will join this lane too: its buffers grow once for all of
        # them, not by two rows at each join (as admission projected, so within the budget).
        _, projected = self._project([])
        rows = projected[self._lanes.index(lane)][0]  # the lane's rows once the others have joined
        cache.insert(len(lane.seqs), prefill_cache, src_row, size, rows=rows + 1)
        seq.start = cache.length - size
        seq.next_token = next_token
        lane.seqs.append(seq)

    def _lane_for(self, size: int) -> _Lane:
        """The lane a prompt of `size` tokens joins (`_choose_lane`)."""
        return self._lanes[_choose_lane([(len(lane.seqs), lane.cache.length) for lane in self._lanes], size)]

    def _decode_step(self) -> None:
        lanes = [lane for lane in self._lanes if lane.seqs]
        rows = [seq for lane in lanes for seq in lane.seqs]
        device = self.loaded.device
        steps, positions_of = [], []
        first = 0
        for lane in lanes:
            length = lane.cache.length
            starts = torch.tensor([s.start for s in lane.seqs], device=device)
            columns = torch.arange(length + 1, device=device)
            mask = (columns.unsqueeze(0) >= starts.unsqueeze(1)).long()
            steps.append(LaneStep(lane.cache, first, len(lane.seqs), mask))
            positions_of.append(length - starts)
            first += len(lane.seqs)
        positions = torch.cat(positions_of).unsqueeze(1)
        ids = torch.tensor([[s.next_token] for s in rows], dtype=torch.long, device=device)
        if len(steps) == 1:
            cache: Any = steps[0].cache
            mask = steps[0].mask
        else:
            cache, mask = LaneGroup(steps), None
        coarse = all(argmax_only(s.request.params, s.shaper is not None) for s in rows)
        logits = self.loaded.forward(ids, mask, positions, cache, argmax_only=coarse)[:, -1, :]
        for lane in lanes:
            lane.cache.advance(1)
        self.metrics.batch_size.observe(len(rows))
        shapers = [s.shaper for s in rows]
        shaped = shape_rows(logits, shapers)
        tokens = sample_batch(
            shaped,
            [s.request.params for s in rows],
            [s.generator for s in rows],
            [s.history for s in rows],
        )
        accept_rows(tokens, shapers)
        logprobs: dict[int, TokenLogprob] = {}
        wanted = [i for i, s in enumerate(rows) if s.request.params.logprobs is not None]
        if wanted:
            top = max(rows[i].request.params.logprobs or 0 for i in wanted)
            index = torch.tensor(wanted, device=device)
            chosen = torch.tensor([tokens[i] for i in wanted], device=device)
            for i, lp in zip(wanted, token_logprobs(logits[index], chosen, top), strict=True):
                own = rows[i].request.params.logprobs or 0
                logprobs[i] = TokenLogprob(lp.token_id, lp.logprob, lp.top[:own])
        finished: dict[int, list[int]] = {}
        lane_of = [(g, i) for g, lane in enumerate(lanes) for i in range(len(lane.seqs))]
        for index, (seq, token) in enumerate(zip(rows, tokens, strict=True)):
            if self._emit(seq, token, logprobs.get(index)):
                g, i = lane_of[index]
                finished.setdefault(g, []).append(i)
            else:
                seq.next_token = token
        for g, indices in finished.items():
            self._remove_rows(lanes[g], indices)

    def _emit(self, seq: _Sequence, token: int, logprob: TokenLogprob | None = None) -> bool:
        """Account for one sampled token and send it; returns True when the sequence is finished."""
        self._record_timing(seq.request)
        text, finish = self._advance(seq, token)
        self._send(seq, token, text, finish, logprob)
        return finish is not None

    def _record_timing(self, request: Request) -> None:
        now = time.perf_counter()
        if request.first_token_at is None:
            request.first_token_at = now
            self.metrics.time_to_first_token.observe(now - request.arrived)
        elif request.last_token_at is not None:
            self.metrics.inter_token_latency.observe(now - request.last_token_at)
        request.last_token_at = now

    def _advance(self, seq: _Sequence, token: int) -> tuple[str, FinishReason | None]:
        """Add `token` to the sequence: the text it releases, and why the sequence ends (None: it goes on).
        Ends: end-of-sequence, a stop string, `max_tokens`, or the model's context."""
        request, params = seq.request, seq.request.params
        if token in self.loaded.eos_token_ids and not params.ignore_eos:
            finish: FinishReason | None = "stop"
            text = seq.stops.flush()  # text held back as a possible stop-string prefix is output after all
        else:
            seq.output_ids.append(token)
            if seq.choice == 0:
                request.output_ids.append(token)
            seq.history.append(token)
            self.metrics.generated_tokens.inc()
            text, hit = seq.stops.feed(seq.decoder.push(token))
            finish = "stop" if hit else self._length_limit(seq)
            if finish == "length":
                text += seq.stops.flush()
        if finish is not None:
            self._count_finished(request, finish)
        return text, finish

    def _length_limit(self, seq: _Sequence) -> FinishReason | None:
        request = seq.request
        generated = len(seq.output_ids)
        if generated >= request.params.max_tokens or len(request.prompt_ids) + generated >= self.loaded.max_context:
            return "length"
        return None

    def _send(
        self, seq: _Sequence, token: int, text: str, finish: FinishReason | None, logprob: TokenLogprob | None
    ) -> None:
        """Every token is reported, even one whose text is not complete yet (part of a character); the
        prompt's logprobs go with the first event."""
        request = seq.request
        prompt_lp = None
        if not seq.sent_prompt_logprobs and request.params.prompt_logprobs:
            seq.sent_prompt_logprobs = True
            prompt_lp = seq.prompt_lp
        request.emit(
            Event(
                text=text,
                token_ids=[token],
                logprobs=[logprob] if logprob is not None else None,
                prompt_logprobs=prompt_lp,
                generated=len(seq.output_ids),
                finish_reason=finish,
                index=seq.choice,
            )
        )

    def _remove_rows(self, lane: _Lane, indices: list[int]) -> None:
        cache, seqs = lane.cache, lane.seqs
        for i in indices:
            self._keep_prefix(lane, i)
        for i in sorted(indices, reverse=True):
            last = len(seqs) - 1
            if i != last:
                cache.move_row(last, i)
                seqs[i] = seqs[last]
            seqs.pop()
            cache.set_rows(len(seqs))
        if seqs:
            lead = min(s.start for s in seqs)
            if lead >= _COMPACT_MIN or (lead and lead * 2 >= cache.length):
                cache.shift(-lead)
                for s in seqs:
                    s.start -= lead
        cache.fit()

    def _fail_all(self, message: str) -> None:
        for seq in self._running + self._prefilling:
            seq.request.emit(Event(text="", token_ids=[], finish_reason="error", error=message))
            self._count_finished(seq.request, "error")
        self._prefilling.clear()
        self._lanes = self._new_lanes()
        self.prefix_cache.clear()  # whatever broke the step may have left it inconsistent

    def _count_finished(self, request: Request, reason: str) -> None:
        self.metrics.finished(
            reason,
            arrived=request.arrived,
            now=time.perf_counter(),
            prompt_tokens=len(request.prompt_ids),
            generated_tokens=len(request.output_ids),
            admitted=request.admitted_at,
            first_token=request.first_token_at,
        )
