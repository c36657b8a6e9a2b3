"""Next-token selection for a batch whose rows each carry their own sampling parameters."""

from __future__ import annotations

import torch

from .request import SamplingParams, TokenLogprob


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty: push down every token already in the prompt or output."""
    scores = logits.index_select(0, seen)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.index_copy(0, seen, scores)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float, min_p: float = 0.0) -> torch.Tensor:
    if min_p > 0.0:
        # Relative to the most likely token: log(p_i) < log(min_p) + log(p_max)  <=>  logit gap.
        floor = logits.max() + torch.log(torch.tensor(min_p, dtype=logits.dtype))
        logits = logits.masked_fill(logits < floor, float("-inf"))
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(0, order, sorted_logits)
    return logits


def sample_row(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    history: list[int],
) -> int:
    """Choose the next token for one row; `logits` is that row's float32 vector."""
    if params.repetition_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history)), dtype=torch.long, device=logits.device)
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    # A penalty or temperature near zero (any float > 0 is valid input) overflows to inf, and softmax
    # over inf is NaN: keep every score finite, and scale relative to the best one.
    logits = torch.nan_to_num(logits, nan=float("-inf"), posinf=torch.finfo(logits.dtype).max)
    if params.greedy:
        return int(torch.argmax(logits))
    temperature = max(params.temperature, torch.finfo(logits.dtype).tiny)  # float32 would round 1e-300 to 0
    logits = (logits - logits.max()) / temperature
    logits = filter_top_k_top_p(logits, params.top_k, params.top_p, params.min_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def argmax_only(params: SamplingParams, shaped: bool) -> bool:
    """Whether a row's next token is its largest logit as the model gives it, and nothing else of its
    logits is read: greedy, no repetition penalty, no logprobs, no shaper (`shaped`: penalties, logit
    bias, grammar). Such rows may be scored coarsely but for their best tokens (`output_head`)."""
    return params.greedy and params.repetition_penalty == 1.0 and params.logprobs is None and not shaped


def sample_batch(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator],
    histories: list[list[int]],
) -> list[int]:
    """Rows that are plain greedy share one reduction; the others are sampled one by one in float32."""
    simple = [p.greedy and p.repetition_penalty == 1.0 for p in params]
    # `max(...).indices` picks the first of tied maxima, as argmax does, in a third of argmax's time
    # over a 49k vocabulary (32 rows: 0.66 against 1.55 ms with the float32 copy). On the logits as
    # they come, bfloat16 or float32: widening bfloat16 is exact, so the winner is the same.
    best = logits.max(dim=-1).indices.tolist() if any(simple) else []
    out: list[int] = []
    for row, p in enumerate(params):
        if simple[row]:
            out.append(int(best[row]))
        else:
            out.append(sample_row(logits[row].float(), p, generators[row], histories[row]))
    return out


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, top: int) -> list[TokenLogprob]:
    """Log-probabilities of `targets` under each row of `logits` (float32), with the `top` best."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1).tolist()
    ids = targets.tolist()
    if top > 0:
        values, indices = torch.topk(logp, min(top, logp.shape[-1]), dim=-1)
        tops = [tuple(zip(i, v, strict=True)) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
    else:
        tops = [() for _ in ids]
    return [TokenLogprob(t, lp, tp) for t, lp, tp in zip(ids, chosen, tops, strict=True)]
