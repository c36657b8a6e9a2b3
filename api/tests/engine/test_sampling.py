"""Per-row sampling: penalties, top-k / top-p filtering, seeds, greedy rows, and logprobs."""

from __future__ import annotations

import math

import torch

from pibloom.engine.request import SamplingParams
from pibloom.engine.sampling import (
    apply_repetition_penalty,
    argmax_only,
    filter_top_k_top_p,
    make_generator,
    sample_batch,
    sample_row,
    token_logprobs,
)

CPU = torch.device("cpu")


def test_repetition_penalty_pushes_seen_tokens_down_whatever_their_sign() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert logits.tolist() == [2.0, -2.0, 1.0, 0.5]  # the input is not modified


def test_top_k_keeps_exactly_the_k_best() -> None:
    logits = torch.tensor([0.1, 3.0, 2.0, -1.0, 2.5])
    kept = torch.isfinite(filter_top_k_top_p(logits, 3, 1.0)).nonzero().flatten().tolist()
    assert sorted(kept) == [1, 2, 4]


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    kept = torch.isfinite(filter_top_k_top_p(logits, 0, 0.8)).nonzero().flatten().tolist()
    assert kept == [0, 1]
    # The most likely token always stays, however small top_p is.
    assert torch.isfinite(filter_top_k_top_p(logits, 0, 0.01)).nonzero().flatten().tolist() == [0]


def test_greedy_is_the_argmax_even_with_a_generator() -> None:
    logits = torch.tensor([0.1, 0.2, 5.0, 0.3])
    params = SamplingParams(temperature=0.0)
    assert sample_row(logits, params, make_generator(None, CPU), []) == 2


def test_same_seed_same_choices_and_different_seeds_differ() -> None:
    logits = torch.zeros(50)  # uniform: every draw is the generator's
    params = SamplingParams(temperature=1.0, seed=7)

    def draws(seed: int) -> list[int]:
        generator = make_generator(seed, CPU)
        return [sample_row(logits, params, generator, []) for _ in range(20)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_sampling_never_picks_a_filtered_token() -> None:
    logits = torch.tensor([1.0, 1.0, 1.0, 1.0, 9.0, 9.0])
    params = SamplingParams(temperature=1.0, top_k=2)
    generator = make_generator(0, CPU)
    assert {sample_row(logits, params, generator, []) for _ in range(100)} == {4, 5}


def test_a_batch_mixes_greedy_penalised_and_sampled_rows() -> None:
    logits = torch.tensor([[0.0, 3.0, 2.9], [0.0, 3.0, 2.9], [0.0, 3.0, 2.9]])
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, repetition_penalty=2.0),  # token 1 was seen: 1.5 < 2.9
        SamplingParams(temperature=1.0, top_k=1),  # top_k=1 is greedy
    ]
    generators = [make_generator(0, CPU) for _ in params]
    assert sample_batch(logits, params, generators, [[], [1], []]) == [1, 2, 1]


def test_greedy_rows_of_bfloat16_logits_pick_what_float32_argmax_picks_ties_included() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 4099).to(torch.bfloat16)
    logits[1, [7, 300, 4000]] = 50.0  # a tie: the first index wins, as with argmax
    logits[2, 11] = float("inf")
    logits[3] = -1.0  # every token tied
    greedy = [SamplingParams(temperature=0.0)] * 8
    generators = [make_generator(0, CPU) for _ in greedy]
    chosen = sample_batch(logits, greedy, generators, [[]] * 8)
    assert chosen == torch.argmax(logits.float(), dim=-1).tolist()
    assert chosen[1:4] == [7, 11, 0]
    # A sampled row beside them still sees float32 logits.
    mixed = [*greedy[:7], SamplingParams(temperature=1.0, top_k=1)]
    assert sample_batch(logits, mixed, generators, [[]] * 8) == chosen


def test_token_logprobs_are_log_softmax_with_the_best_alternatives() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    result = token_logprobs(logits, torch.tensor([0, 2]), top=2)
    expected = torch.log_softmax(logits, dim=-1)
    assert result[0].token_id == 0
    assert math.isclose(result[0].logprob, float(expected[0, 0]), rel_tol=1e-6)
    assert [token for token, _ in result[0].top] == [2, 1]
    assert math.isclose(result[1].logprob, math.log(1 / 3), rel_tol=1e-6)
    assert token_logprobs(logits, torch.tensor([0, 2]), top=0)[0].top == ()


def test_extreme_but_valid_parameters_still_sample_a_real_token() -> None:
    """Found by schema fuzzing: repetition_penalty=5e-324 turned scores into inf and softmax into NaN,
    and the failed step took every request in the batch down with it."""
    logits = torch.tensor([1.0, 3.0, 2.0, -1.0])
    generator = make_generator(0, CPU)
    tiny_penalty = SamplingParams(temperature=1.0, repetition_penalty=5e-324)
    assert sample_row(logits, tiny_penalty, generator, [0, 1]) == 1  # the most likely seen token wins by far
    tiny_temperature = SamplingParams(temperature=1e-300)
    assert sample_row(logits, tiny_temperature, generator, []) == 1  # as greedy


def test_argmax_only_rows_are_plain_greedy_ones_that_read_nothing_else() -> None:
    assert argmax_only(SamplingParams(temperature=0.0), shaped=False)
    assert argmax_only(SamplingParams(temperature=0.9, top_k=1), shaped=False)  # top_k=1 is greedy
    assert not argmax_only(SamplingParams(temperature=0.9), shaped=False)
    assert not argmax_only(SamplingParams(temperature=0.0, repetition_penalty=1.2), shaped=False)
    assert not argmax_only(SamplingParams(temperature=0.0, logprobs=0), shaped=False)  # the chosen token's logprob
    assert not argmax_only(SamplingParams(temperature=0.0), shaped=True)  # penalties, bias or a grammar
