"""A lean forward pass for Llama-shaped models (Llama, SmolLM, Mistral without sliding window, Qwen2).

transformers' eager forward spends as much time dispatching small operations (module calls, mask
builders, cache bookkeeping, per-head reshapes) as the matrix products themselves on a small CPU: for
SmolLM2-135M, 41% of a decode step against 47% in matmuls (py-spy). This pass runs the same
mathematics with about a third of the operations per layer: q/k/v and gate/up are one matmul each
(weights concatenated once; the model's own parameters become views of them or, where oneDNN runs
bfloat16, compute through one packed copy, so memory does not grow), rotary embedding is applied to
queries and keys together, the mask is built once per step, and attention is one grouped-query
call: piBLOOM's own kernel for decode steps where it is built (`attention_kernel`), otherwise and for
prompts `scaled_dot_product_attention`. Where the loader compiles the stack (`compiled_decode`),
decode steps, and on AMX CPUs prompts, run through the compiled graphs instead, whose attention
operator calls back into this pass (`attend_decode`, `attend_prefill`).

It reads the model's own modules for everything that varies between checkpoints (the rotary
embedding with its scaling rules, norms' epsilon, biases), and writes keys and values through the
cache's `update`, so the engine's slot cache and transformers' `DynamicCache` both work unchanged.
Models it does not cover use transformers' forward (`supports` says which).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import attention_kernel, output_head, quantize
from .compiled_decode import CompiledDecode, NotCovered, Prefill
from .kv_cache import LaneGroup

log = logging.getLogger(__name__)

# Architectures whose decoder layer is exactly: RMSNorm -> GQA attention with rotary -> residual ->
# RMSNorm -> SiLU-gated MLP -> residual. Qwen2 adds q/k/v biases, which the pass carries.
SUPPORTED_TYPES = frozenset({"llama", "mistral", "qwen2"})


def supports(model: nn.Module) -> str | None:
    """None when the lean pass computes this model exactly; otherwise why it cannot."""
    config = model.config
    if config.model_type not in SUPPORTED_TYPES:
        return f"model type {config.model_type!r}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r}"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    layer = model.model.layers[0]
    if layer.self_attn.o_proj.bias is not None:
        return "output projection bias"
    if not all(isinstance(m, nn.Linear) for m in _projections(layer)):
        return "non-standard linear layers"
    return None


def _projections(layer: nn.Module) -> list[nn.Module]:
    attn, mlp = layer.self_attn, layer.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]


def _fuse(modules: list[nn.Linear]) -> torch.Tensor:
    """Concatenate the weights along the output dimension and make each module's weight a view of the
    result, so the fused matrix costs no extra memory and the model itself still works."""
    fused = torch.cat([m.weight.detach() for m in modules], dim=0)
    offset = 0
    for m in modules:
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(fused[offset : offset + rows], requires_grad=False)
        offset += rows
    return fused


def _fuse_bias(modules: list[nn.Linear]) -> torch.Tensor | None:
    if all(m.bias is None for m in modules):
        return None
    parts = [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.weight.shape[0]) for m in modules]
    return torch.cat(parts)


class _Dense:
    """`F.linear` over a (fused) weight; cheaper to call than an `nn.Module`."""

    __slots__ = ("bias", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


Projection = Callable[[torch.Tensor], torch.Tensor]
# A decode step's attention target: a cache, the batch rows it holds (None: all) and their padding bias.
DecodeTarget = tuple[Any, slice | None, torch.Tensor]


class _ByTokens:
    """4-bit weights for steps of up to `tokens` tokens, the dense ones above. A decode step of a few
    rows is bound by memory traffic, which 4 bits cut to a third; a larger one is bound by compute,
    where the dense matmul wins and the int4 kernel's unpacking costs (measured in `quantize`)."""

    __slots__ = ("dense", "small", "tokens")

    def __init__(self, small: Projection, dense: Projection, tokens: int) -> None:
        self.small, self.dense, self.tokens = small, dense, tokens

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(x) if x.numel() <= self.tokens * x.shape[-1] else self.dense(x)


class _Packed:
    """`F.linear` over a weight that oneDNN has laid out once for its matmul kernel (blocked for AMX
    on CPUs that have it). Unpacked, the kernel re-lays the weight out at every call: for the
    embedded model's projections in bfloat16 on 2 cores, packing took a 16-row step's matmuls from
    21.8 to 17.0 ms and a 128-token prompt chunk's from 51.9 to 34.2 (measured)."""

    __slots__ = ("bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach())
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class _PackedPart(nn.Module):
    """Takes the place of one of the linear layers a packed (or 4-bit) projection fused, computing its
    rows of the fused product: that copy is then the only copy of the weights, and the model's own
    forward (transformers' pass, the tests' references) still computes the same function."""

    def __init__(self, fused: Projection, start: int, stop: int) -> None:
        super().__init__()
        self.fused, self.start, self.stop = fused, start, stop
        self.out_features = stop - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused(x)[..., self.start : self.stop]


def _dense_bytes(projection: Projection) -> int:
    """Bytes of a dense projection's weights (logical size; oneDNN's blocked layout may pad it)."""
    weight = projection.packed if isinstance(projection, _Packed) else getattr(projection, "weight", None)
    return 0 if weight is None else weight.numel() * weight.element_size()


def packing_pays(weight: torch.Tensor) -> bool:
    """Whether oneDNN's packed matmul runs this weight natively: bfloat16 on a CPU with bfloat16
    instructions. (In float32 it was slower at one row than the default kernel, measured.)"""
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


def _dense(owner: nn.Module, names: list[str], bias: torch.Tensor | None, pack: bool) -> Projection:
    """The dense weights of the named layers as one matmul: fused in place (the layers become views
    of the fused matrix), or packed, the layers then computing through the packed copy."""
    modules = [getattr(owner, name) for name in names]
    if not pack:
        return _Dense(_fuse(modules), bias)
    packed = _Packed(torch.cat([m.weight.detach() for m in modules], dim=0), bias)
    _parts(owner, names, packed)
    return packed


def _parts(owner: nn.Module, names: list[str], fused: Projection) -> None:
    """Put the named layers' parts of the fused projection in their places (`_PackedPart`)."""
    start = 0
    for name in names:
        rows = getattr(owner, name).out_features
        setattr(owner, name, _PackedPart(fused, start, start + rows))
        start += rows


def _projection(
    owner: nn.Module, names: list[str], int4: bool, int4_tokens: int = 0, pack: bool = False
) -> tuple[Projection, quantize.Int4Linear | None]:
    """One matmul for the named linear layers of `owner`: 4-bit when asked and the shapes allow it,
    else the dense weights (`_dense`); with `int4_tokens`, both (`_ByTokens`). Also the 4-bit layer,
    where there is one, for the compiled decode step."""
    modules = [getattr(owner, name) for name in names]
    bias = _fuse_bias(modules)
    quantizable = all(quantize.quantizable(m) for m in modules)
    if int4 and quantizable:
        fused = quantize.quantize_fused(modules, bias)
        _parts(owner, names, fused)
        return fused.forward, fused
    if int4_tokens and quantizable:
        small = quantize.quantize_fused(modules, bias)
        return _ByTokens(small.forward, _dense(owner, names, bias, pack), int4_tokens), small
    return _dense(owner, names, bias, pack), None


@dataclass
class _Layer:
    input_norm: torch.Tensor
    qkv: Projection
    out: Projection
    post_norm: torch.Tensor
    gate_up: Projection
    down: Projection


class LlamaForward:
    """Callable like the engine's forward: logits of the last `keep` positions (0: all)."""

    name = "lean"

    def __init__(self, model: nn.Module, *, int4: bool = False, int4_tokens: int = 0, pack: bool | None = None) -> None:
        """`pack`: lay the dense projections out for oneDNN (`_Packed`); by default where it pays."""
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"the lean forward pass does not cover this model: {reason}")
        if pack is None:
            pack = packing_pays(model.lm_head.weight)
        self.packed = pack
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.heads)
        self.eps = float(config.rms_norm_eps)
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.final_norm = model.model.norm.weight
        self.head = model.lm_head  # an nn.Linear, or `output_head.RescoredHead` in its place
        self.layers = []
        int4_layers: list[dict[str, quantize.Int4Linear | None]] = []
        # Projections with both dense and 4-bit weights, by the modules they fused (`drop_dense`).
        self._owners: list[tuple[nn.Module, list[str], quantize.Int4Linear]] = []

        def projection(owner: nn.Module, names: list[str]) -> tuple[Projection, quantize.Int4Linear | None]:
            fused, fused4 = _projection(owner, names, int4, int4_tokens, pack)
            if isinstance(fused, _ByTokens) and fused4 is not None:
                self._owners.append((owner, names, fused4))
            return fused, fused4

        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv4 = projection(attn, ["q_proj", "k_proj", "v_proj"])
            out, out4 = projection(attn, ["o_proj"])
            gate_up, gate_up4 = projection(mlp, ["gate_proj", "up_proj"])
            down, down4 = projection(mlp, ["down_proj"])
            self.layers.append(
                _Layer(
                    input_norm=layer.input_layernorm.weight,
                    qkv=qkv,
                    out=out,
                    post_norm=layer.post_attention_layernorm.weight,
                    gate_up=gate_up,
                    down=down,
                )
            )
            int4_layers.append({"qkv": qkv4, "out": out4, "gate_up": gate_up4, "down": down4})
        # Every layer's 4-bit projections by name, when all of them have one (`compiled_decode`).
        complete = all(linear is not None for layer in int4_layers for linear in layer.values())
        self.int4_layers = int4_layers if complete else None
        # Set by the loader where the compiled decode step applies (`compiled_decode`).
        self.compiled: CompiledDecode | None = None
        self._eager_steps = 0  # decode steps the compiled step did not cover (warned once)
        # piBLOOM's decode attention, set by the loader where it is built for this model (`attention_kernel`).
        self.attention_kernel: attention_kernel.Kernel | None = None
        self.scale = float(getattr(model.model.layers[0].self_attn, "scaling", self.head_dim**-0.5))

    def __call__(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
        keep: int = 1,
        argmax_only: bool = False,
    ) -> torch.Tensor:
        rows, steps = input_ids.shape
        compiled = self.compiled
        if compiled is not None and (steps == 1 or compiled.prefills):
            try:
                return compiled(input_ids, mask, positions, cache, keep, argmax_only)
            except NotCovered as exc:  # raised before the cache is touched: the eager pass runs it
                log.log(
                    logging.DEBUG if self._eager_steps else logging.WARNING,
                    "running a forward pass eagerly: the compiled graphs do not cover it (%s)",
                    exc,
                )
                self._eager_steps += 1
        h = self.embed(input_ids)
        cos, sin = self.rotary(h, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [rows, 1, steps, head_dim]: broadcast over heads
        if steps == 1:
            targets = self.decode_targets(cache, mask, h.dtype)
        else:
            attend = self._attention_mask(mask, steps, h.dtype)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        rotated = heads + kv_heads
        half = dim // 2
        for index, layer in enumerate(self.layers):
            x = F.rms_norm(h, (h.shape[-1],), layer.input_norm, self.eps)
            qkv = layer.qkv(x).view(rows, steps, rotated + kv_heads, dim).transpose(1, 2)
            qk = qkv[:, :rotated]
            # Rotary on queries and keys at once: x * cos + rotate_half(x) * sin.
            qk = qk * cos + torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin
            if steps == 1:
                attn = self.attend_decode(qk[:, :heads], qk[:, heads:], qkv[:, rotated:], index, targets)
            else:
                keys, values = cache.update(qk[:, heads:], qkv[:, rotated:], index)
                attn = F.scaled_dot_product_attention(
                    qk[:, :heads], keys, values, attn_mask=attend, scale=self.scale, enable_gqa=kv_heads != heads
                )
            h = h + layer.out(attn.transpose(1, 2).reshape(rows, steps, heads * dim))
            x = F.rms_norm(h, (h.shape[-1],), layer.post_norm, self.eps)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        if keep:
            h = h[:, -keep:]
        h = F.rms_norm(h, (h.shape[-1],), self.final_norm, self.eps)
        return self.logits(h, argmax_only)

    def logits(self, h: torch.Tensor, argmax_only: bool = False) -> torch.Tensor:
        """The output layer over final hidden states; `argmax_only` lets a `RescoredHead` rank in 4 bits."""
        if isinstance(self.head, output_head.RescoredHead):
            return self.head(h, argmax_only)
        out: torch.Tensor = self.head(h)
        return out

    def fits_attention_kernel(self) -> bool:
        """Whether piBLOOM's decode attention covers this pass (shape, dtype, on the CPU); the loader
        then builds it and sets `attention_kernel`."""
        weights = self.final_norm
        return weights.device.type == "cpu" and attention_kernel.supports(
            self.heads, self.kv_heads, self.head_dim, weights.dtype
        )

    def decode_targets(self, cache: Any, mask: torch.Tensor, dtype: torch.dtype) -> list[DecodeTarget]:
        """Where a decode step's keys and values go and what each part attends with: for a `LaneGroup`,
        each lane's cache, its rows of the batch and its own padding bias (a lane attends over its own
        columns only); otherwise the one cache, for every row."""
        if self.attention_kernel is not None:
            dtype = torch.float32  # the kernel's bias
        if isinstance(cache, LaneGroup):
            return [
                (lane.cache, slice(lane.first, lane.first + lane.rows), self._attention_mask(lane.mask, 1, dtype))
                for lane in cache.lanes
            ]
        return [(cache, None, self._attention_mask(mask, 1, dtype))]

    def attend_decode(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int, targets: list[DecodeTarget]
    ) -> torch.Tensor:
        """One decode step's attention at `layer`: the new keys and values written into each target's
        cache, each target's rows attending over its columns (the eager pass and the compiled step's
        attention operator both run this)."""
        parts = []
        for cache, rows, bias in targets:
            if rows is None:
                keys, values = cache.update(key, value, layer)
                parts.append(self._decode_attention(query, keys, values, bias))
            else:
                keys, values = cache.update(key[rows], value[rows], layer)
                parts.append(self._decode_attention(query[rows], keys, values, bias))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def attend_prefill(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, layer: int, prefill: Prefill
    ) -> torch.Tensor:
        """A prompt chunk's attention at `layer` when the compiled graph runs it, each token a row of
        the graph ([rows x steps, heads, 1, head_dim]): what the eager pass computes for prompts, its
        result laid out as the graph's rows again."""
        rows, steps = prefill.rows, prefill.steps

        def per_row(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(rows, steps, x.shape[1], self.head_dim).transpose(1, 2)

        keys, values = prefill.cache.update(per_row(key), per_row(value), layer)
        grouped = self.kv_heads != self.heads
        attn = F.scaled_dot_product_attention(
            per_row(query), keys, values, attn_mask=prefill.mask, scale=self.scale, enable_gqa=grouped
        )
        return attn.transpose(1, 2).reshape(rows * steps, self.heads, 1, self.head_dim)

    def drop_dense(self) -> int:
        """Let every projection compute through its 4-bit weights only and free the dense ones: for
        when the compiled graphs run prompts as well as decode steps (`CompiledDecode.prefills`), the
        dense weights' only use. The model's own linear layers compute through the 4-bit weights too.
        Returns the bytes of dense weights let go."""
        assert self.int4_layers is not None
        freed = 0
        for layer, int4 in zip(self.layers, self.int4_layers, strict=True):
            for name, linear in int4.items():
                projection = getattr(layer, name)
                if isinstance(projection, _ByTokens):
                    freed += _dense_bytes(projection.dense)
                    assert linear is not None
                    setattr(layer, name, linear.forward)
        for owner, names, fused in self._owners:
            _parts(owner, names, fused)
        self._owners = []
        return freed

    def _decode_attention(
        self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """One query per row, through `scaled_dot_product_attention` at every row count: one operation
        where batched matmuls take four (each a wake-up of the thread team). With torch 2.13 it is the
        faster at 16 and 32 rows too, from 128 to 3,072 columns; in the engine, alternating in one
        process, a 32-row step of ~500 columns took 134 ms against 154 with the matmuls (measured).
        The keys and values are views of the cache's first `length` columns, not its whole buffers: the
        kernel follows their strides without copying, and reads no column past the length (the
        buffers grow by a quarter at a time; 32 rows at 300 of 512 columns: 488 against 714 us).
        piBLOOM's kernel, where set, takes the same views and the bias as [rows, columns]."""
        if self.attention_kernel is not None:
            rows = query.shape[0]
            out = self.attention_kernel(
                query.reshape(rows, self.heads, self.head_dim), keys, values, bias.view(rows, -1), self.scale
            )
            return out.view(rows, self.heads, 1, self.head_dim)
        return F.scaled_dot_product_attention(
            query, keys, values, attn_mask=bias, scale=self.scale, enable_gqa=self.kv_heads != self.heads
        )

    @staticmethod
    def _attention_mask(mask: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
        """For one query per row, an additive [rows, 1, 1, columns] bias (0 or -inf) from the padding
        mask. For several, [rows, 1, steps, columns] booleans, causal over the last `steps` columns; a
        padding query also sees itself, so no row is fully masked (that would give NaN, which would
        then sit in the cache under the padding)."""
        columns = mask.shape[-1]
        valid = mask.bool()[:, None, None, :]
        if steps == 1:
            bias = torch.zeros(valid.shape, dtype=dtype, device=mask.device).masked_fill_(~valid, float("-inf"))
            bias[..., -1] = 0  # the query's own column
            return bias
        query = torch.arange(columns - steps, columns, device=mask.device)[:, None]
        key = torch.arange(columns, device=mask.device)[None, :]
        return (valid & (key <= query)) | (key == query)
