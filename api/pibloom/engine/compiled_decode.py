"""The decode step compiled by inductor, for 4-bit weights on x86 CPUs with AVX-512.

Eagerly, a decode step is ~600 small operations, each a Python call and an OpenMP region, and torch's
int4 matmul unpacks the weights at every call, so it costs more with every row (30 layers of the
embedded model's projections: 21 ms at 16 rows, 41 at 32). Compiled with max-autotune and freezing,
inductor generates its own 4-bit GEMM (`CppMicroGemmWoQInt4Avx512`, picked by benchmarking it against
the int4 kernel) and fuses the norms, rotary embedding, SiLU and residual adds into a few loops. The
same projections then take 8 ms at 16 rows and 11 at 32, and the whole step, measured in one process
alternating with the eager pass: one row 9.3 against 12.1 ms, 16 rows 25 against 39, 32 rows 34
against 55.

The template needs its weights as constants of the graph, hence freezing: the layers' 4-bit buffers
become part of the compiled code, which is why the graph covers the whole stack of layers rather than
one projection at a time (each would be compiled anew). Attention stays outside it as a custom
operator: it writes the new keys and values into the engine's cache, whose length changes every step
and whose rows come and go, and that the graph should not see. Two graphs are compiled at load, one
for a single row and one for any other count, so no step ever waits for the compiler. On a CPU with
AMX, prompt chunks run through the graph for many rows as well, each token a row
(`CompiledDecode.__call__`): its AMX 4-bit GEMM is faster than the dense bfloat16 matmul at any chunk
size, so the dense weights can go (`prefill_pays`).

The server normally runs these graphs as packages built ahead of time (`decode_packages`,
`CompiledDecode.use_packages`); `warm` compiles them in this process where that is turned off or the
packages cannot be had.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu, graph_constants, int4_blocked, toolchain
from .kv_cache import SlotCache

if TYPE_CHECKING:
    from .decode_packages import Packages
    from .llama_forward import LlamaForward  # which imports this module

log = logging.getLogger(__name__)

# max-autotune is what offers inductor's 4-bit GEMM template at all; freezing makes the weights the
# constants it requires. One compile thread: no pool of worker processes, each a copy of the server.
_OPTIONS: dict[str, Any] = {
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "freezing": True,
    "compile_threads": 1,
}

# The multi-row graph's kernels are autotuned at the row count it is first run with: at two rows
# torch's int4 kernel wins and would then serve 32 at a quarter of the template's speed; at sixteen
# the template wins for every projection (and ties at four).
_TUNE_ROWS = 16


class _StepContext(threading.local):
    """What the attention operator needs and the graph must not see: the pass whose attention it runs,
    and this step's caches and masks: a decode step's targets (`LlamaForward.decode_targets`), or a
    prompt chunk's cache, mask and shape (`Prefill`)."""

    forward: Any = None
    targets: list[Any] | None = None
    prefill: Prefill | None = None


class Prefill(NamedTuple):
    """A prompt chunk run through the decode graph: its `rows` x `steps` tokens are the graph's rows."""

    cache: Any
    mask: torch.Tensor  # `LlamaForward._attention_mask` for `steps` queries per row
    rows: int
    steps: int


def _attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int) -> torch.Tensor:
    prefill = _STEP.prefill
    if prefill is not None:
        out: torch.Tensor = _STEP.forward.attend_prefill(query, key, value, layer, prefill)
    else:
        assert _STEP.targets is not None
        out = _STEP.forward.attend_decode(query, key, value, layer, _STEP.targets)
    # Contiguous, as the operator's fake output says it is (torch's attention may return another layout).
    return out.contiguous()


_STEP = _StepContext()
_register_lock = threading.Lock()
_library: Any = None  # the operator's registration: it lasts as long as this object


def _attention_operator() -> Any:
    """`pibloom::decode_attention`, registered on first use (not at import). Through
    `torch.library.Library` rather than `torch.library.custom_op`: a custom_op's every call goes through
    a wrapper that imports torch's compiler (dynamo, sympy and more: +74 MB resident in a served worker
    after its first request, measured), which a worker running packages otherwise never imports; a
    plain operator's call is also cheaper (2.4 against 4.1 µs, measured). Its fake kernel, for tracing
    (`warm`, and the package builder's export), is registered alongside; that needs no compiler."""
    global _library
    with _register_lock:
        if _library is None:
            library = torch.library.Library("pibloom", "DEF")
            library.define("decode_attention(Tensor query, Tensor key, Tensor value, int layer) -> Tensor")
            library.impl("decode_attention", _attend, "CPU")
            torch.library.register_fake("pibloom::decode_attention", _attention_shape, lib=library)
            _library = library
    return torch.ops.pibloom.decode_attention


def _attention_shape(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int) -> torch.Tensor:
    return query.new_empty(query.shape)


def unavailable(forward: LlamaForward) -> str | None:
    """None when the compiled step applies to this pass on this machine; otherwise why not."""
    if not cpu.x86_64():
        return f"the {platform.machine()} architecture (inductor's 4-bit GEMM is x86 only)"
    if torch.backends.cpu.get_cpu_capability() not in {"AVX512", "AMX"}:
        return "a CPU without AVX-512"
    if forward.int4_layers is None:
        return "projections without 4-bit weights"
    weights = forward.final_norm
    if weights.dtype not in {torch.bfloat16, torch.float32} or weights.device.type != "cpu":
        return f"{weights.dtype} on {weights.device.type}, not bfloat16 or float32 on the CPU"
    return toolchain.missing()


def prefill_pays(forward: LlamaForward) -> bool:
    """Whether prompt chunks run faster through the graph for many rows than through the dense
    weights: in bfloat16 on a CPU with AMX, where inductor's 4-bit GEMM is its AMX one (the embedded
    model's projections, 30 layers, at 256 rows 29 against 47 ms for the packed dense weights, at 64
    rows 14 against 16, measured). Its AVX-512 GEMM was not measured on prompts: the dense weights
    stay there."""
    features = cpu.flags().split()
    return forward.final_norm.dtype == torch.bfloat16 and {"amx_tile", "amx_bf16"} <= set(features)


class _Stack(nn.Module):
    """The decoder layers of one decode step, from embedded tokens to the final norm, with each
    layer's 4-bit weights as buffers (freezing makes them constants of the graph)."""

    def __init__(self, forward: LlamaForward) -> None:
        super().__init__()
        assert forward.int4_layers is not None
        self.heads, self.kv_heads, self.head_dim = forward.heads, forward.kv_heads, forward.head_dim
        self.eps = forward.eps
        self.layers = len(forward.layers)
        # Plain attributes the compiled code is specialised on are guards checked at every call: one
        # group size and the set of biased projections, rather than one of each per layer.
        groups: set[int] = set()
        biased: set[str] = set()
        layouts: set[bool] = set()
        for index, (layer, int4) in enumerate(zip(forward.layers, forward.int4_layers, strict=True)):
            self.register_buffer(f"input_norm{index}", layer.input_norm, persistent=False)
            self.register_buffer(f"post_norm{index}", layer.post_norm, persistent=False)
            for name, linear in int4.items():
                assert linear is not None
                self.register_buffer(f"{name}{index}", linear.packed, persistent=False)
                self.register_buffer(f"{name}_scales{index}", linear.scales_zeros, persistent=False)
                groups.add(linear.group)
                layouts.add(linear.blocked)
                if linear.bias is not None:
                    self.register_buffer(f"{name}_bias{index}", linear.bias.detach(), persistent=False)
                    biased.add(name)
        (self.group,) = groups  # the loader quantizes every projection alike
        # Weights re-blocked for inductor's AMX GEMM (`int4_blocked`), all or none: piBLOOM's kernel
        # computes them (the one-row graph then reads the many-row graph's weights).
        (self.blocked,) = layouts
        self.biased = frozenset(biased)
        self.register_buffer("final_norm", forward.final_norm, persistent=False)

    def _project(self, x: torch.Tensor, name: str, index: int) -> torch.Tensor:
        weight, scales = getattr(self, f"{name}{index}"), getattr(self, f"{name}_scales{index}")
        if self.blocked:
            out = int4_blocked.matmul(x, weight, scales, self.group)
        else:
            out = torch._weight_int4pack_mm_for_cpu(x, weight, self.group, scales)
        return out + getattr(self, f"{name}_bias{index}") if name in self.biased else out

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`h` [rows, hidden]; `cos`, `sin` [rows, 1, 1, head_dim]. Returns [rows, hidden]."""
        attend = torch.ops.pibloom.decode_attention  # registered by `warm` before compiling
        rows, hidden = h.shape
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        rotated, half = heads + kv_heads, dim // 2
        for index in range(self.layers):
            x = F.rms_norm(h, (hidden,), getattr(self, f"input_norm{index}"), self.eps)
            qkv = self._project(x, "qkv", index).view(rows, 1, rotated + kv_heads, dim).transpose(1, 2)
            qk = qkv[:, :rotated]
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            attn = attend(qk[:, :heads], qk[:, heads:], qkv[:, rotated:], index)
            h = h + self._project(attn.reshape(rows, heads * dim), "out", index)
            x = F.rms_norm(h, (hidden,), getattr(self, f"post_norm{index}"), self.eps)
            gate, up = self._project(x, "gate_up", index).chunk(2, dim=-1)
            h = h + self._project(F.silu(gate) * up, "down", index)
        return F.rms_norm(h, (hidden,), self.final_norm, self.eps)


class NotCovered(Exception):
    """A call the compiled graphs do not cover; raised before anything was computed."""


def _without_compiling(graph: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a compiled graph, raising `NotCovered` where it would have to compile again (torch's
    fail-on-recompile stance raises that as a plain `RuntimeError`)."""
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            return graph(*args, **kwargs)
    except RuntimeError as exc:
        if "recompile" not in str(exc):
            raise
        raise NotCovered(str(exc)) from exc


def _dropping_cache_artifacts() -> contextlib.AbstractContextManager[Any]:
    """A block whose compiles leave no cache entries recorded (`CompiledDecode.warm`); where torch's
    private recorder is missing or moved, a block that changes nothing."""
    try:
        from torch.compiler._cache import CacheArtifactManager
    except ImportError:
        return contextlib.nullcontext()
    return CacheArtifactManager.with_fresh_cache()


class CompiledDecode:
    """Runs a decode step (one new token per row) of a `LlamaForward` through the compiled stack.
    `warm` compiles both graphs; until it has, and for any step the graphs do not cover, the caller
    runs its eager pass."""

    def __init__(self, forward: LlamaForward) -> None:
        self.forward = forward
        self.stack = _Stack(forward).eval()
        self.compiled: Any = None
        self.seconds = 0.0
        self.thread_counts: tuple[int, ...] = (torch.get_num_threads(),)
        self.shared_bytes = 0  # constants the graphs share rather than each keep (`graph_constants`)
        self.prefills = prefill_pays(forward)  # prompt chunks run through the graph too (`__call__`)
        self.packaged = False  # the graphs are `decode_packages`' rather than compiled here

    def warm(self, threads: tuple[int, ...] = ()) -> None:
        """Compile the single-row graph and the graph for any other row count (rows marked dynamic)
        by running them on a scratch cache, at each of these thread counts (default: the current
        one). Raises whatever the compiler raised."""
        _attention_operator()
        import torch._inductor.config as inductor_config

        compiled = torch.compile(self.stack, fullgraph=True)
        forward = self.forward
        current = torch.get_num_threads()
        counts = tuple(sorted(set(threads or (current,))))
        start = time.perf_counter()
        # As a patch of inductor's config while compiling: `torch.compile(options=...)` did not turn
        # freezing on (the template was never offered, measured). torch also records every cache entry
        # it writes or reads, as bytes, for `torch.compiler.save_cache_artifacts`, which the server never
        # calls: 133 MB held for good with the embedded model's graphs (measured), dropped on leaving.
        try:
            with (
                inductor_config.patch(_OPTIONS),
                torch.inference_mode(),
                graph_constants.shared() as sharing,
                _dropping_cache_artifacts(),
            ):
                for count in counts:
                    torch.set_num_threads(count)
                    for rows in (_TUNE_ROWS, 1):
                        cache = SlotCache(len(forward.layers), rows)
                        cache.reset(0)
                        ids, mask = torch.zeros(rows, 1, dtype=torch.long), torch.ones(rows, 1, dtype=torch.long)
                        self._run(compiled, ids, mask, ids, cache, dynamic=rows > 1)
        finally:
            torch.set_num_threads(current)
        self.compiled = compiled
        self.seconds = time.perf_counter() - start
        self.thread_counts = counts
        self.shared_bytes = sharing.saved_bytes

    def use_packages(self, packages: Packages, seconds: float) -> None:
        """Run the graphs built ahead of time (`decode_packages`) instead of compiling in process: they
        serve every team size, and no call can make them compile."""
        self.compiled = packages
        self.packaged = True
        self.stack = _Stack(self.forward).eval()  # over the tensors loading them may have swapped in
        self.seconds = seconds
        self.thread_counts = ()

    def _threads_for(self, threads: int) -> int:
        """The compiled thread count a step runs at: the largest not above the team's, else the least."""
        fitting = [count for count in self.thread_counts if count <= threads]
        return max(fitting) if fitting else self.thread_counts[0]

    def __call__(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        keep: int = 1,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        """The engine's forward (`forward.Forward`) through the compiled graphs: logits [rows, 1, vocab]
        of a decode step over a slot cache, a lane group or any cache with transformers' `update`; or,
        for several tokens per row, those of a prompt chunk's last `keep` positions (0: all), each token
        a row of the graph for many rows (only where `prefills`: the loader then drops the dense
        weights). Raises `NotCovered` before touching the cache when the graphs do not cover the call
        (the caller then runs it eagerly).

        torch's compiler guards on the thread count, so the graphs are compiled at each count the
        thread governor uses (all of the team, and one thread) and a call runs at the nearest of them
        not above the team's; the team is handed back as it was. Packages (`use_packages`) run at
        whatever size the team has."""
        if self.packaged:
            return self._step(input_ids, mask, positions, cache, keep, argmax_only)
        threads = torch.get_num_threads()
        run_at = self._threads_for(threads)
        if run_at != threads:
            torch.set_num_threads(run_at)
        try:
            out: torch.Tensor = _without_compiling(self._step, input_ids, mask, positions, cache, keep, argmax_only)
            return out
        finally:
            if run_at != threads:
                torch.set_num_threads(threads)

    def _step(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        keep: int,
        argmax_only: bool,
    ) -> torch.Tensor:
        """A decode step through the graphs, or a prompt chunk (several tokens per row)."""
        if input_ids.shape[1] == 1:
            return self._run(self.compiled, input_ids, mask, positions, cache, argmax_only=argmax_only)
        return self._run_prefill(input_ids, mask, positions, cache, keep, argmax_only)

    def _run_prefill(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        keep: int,
        argmax_only: bool,
    ) -> torch.Tensor:
        forward = self.forward
        rows, steps = input_ids.shape
        h = forward.embed(input_ids)
        cos, sin = forward.rotary(h, positions)  # [rows, steps, head_dim]
        tokens = rows * steps
        h = h.reshape(tokens, h.shape[-1])
        cos, sin = cos.reshape(tokens, 1, 1, cos.shape[-1]), sin.reshape(tokens, 1, 1, sin.shape[-1])
        _STEP.forward = forward
        _STEP.prefill = Prefill(cache, forward._attention_mask(mask, steps, h.dtype), rows, steps)
        try:
            out = self.compiled(h, cos, sin)
        finally:
            _STEP.forward = _STEP.prefill = None
        out = out.view(rows, steps, -1)
        return forward.logits(out[:, -keep:] if keep else out, argmax_only)

    def _run(
        self,
        graph: Any,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        dynamic: bool = False,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        forward = self.forward
        h = forward.embed(input_ids)
        cos, sin = forward.rotary(h, positions)
        h, cos, sin = h[:, 0], cos[:, None], sin[:, None]
        if dynamic:
            for tensor in (h, cos, sin):
                torch._dynamo.mark_dynamic(tensor, 0)
        _STEP.forward, _STEP.targets = forward, forward.decode_targets(cache, mask, h.dtype)
        try:
            out = graph(h, cos, sin)
        finally:
            _STEP.forward = _STEP.targets = None
        return forward.logits(out[:, None], argmax_only)
