"""Pure pieces of the rollout: sampling settings, token choice, the log-prob convention, masks, layout."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.config import RolloutConfig
from rlkit.rollout.sampling import (
    SamplingParams,
    draw_tokens,
    expand_indices,
    filter_logits,
    group_ids_for,
    mask_through_first_stop,
    next_tokens,
    rank_seed,
)

NEG = float("-inf")


# ----------------------------------------------------------------------------- settings


def test_sampling_params_from_config_and_overrides():
    cfg = RolloutConfig(n=3, temperature=0.7, top_p=0.9, top_k=5, max_new_tokens=11, stop=["\n"], seed=42)
    params = SamplingParams.from_config(cfg, n=1)
    assert (params.n, params.temperature, params.top_p, params.top_k) == (1, 0.7, 0.9, 5)
    assert params.max_new_tokens == 11 and params.stop == ["\n"]
    assert params.seed is None  # the config seed is the engine's base seed, not a per-call seed
    greedy = params.replace(temperature=0.0)
    assert greedy.greedy and greedy.logprob_temperature == 1.0 and not params.greedy
    assert params.logprob_temperature == 0.7


def test_sampling_params_coerce_dict_over_default():
    default = SamplingParams(n=4, max_new_tokens=8)
    assert SamplingParams.coerce(None, default) is default
    assert SamplingParams.coerce({"temperature": 0}, default) == SamplingParams(n=4, max_new_tokens=8, temperature=0)
    with pytest.raises(ValueError, match="unknown field.*tempreature"):
        SamplingParams.coerce({"tempreature": 0}, default)
    with pytest.raises(TypeError, match="sampling must be"):
        SamplingParams.coerce(3, default)


@pytest.mark.parametrize(
    "field, value",
    [("n", 0), ("temperature", -0.1), ("top_p", 0.0), ("top_p", 1.5), ("top_k", -1), ("max_new_tokens", 0),
     ("stop", "\n"), ("stop", [""]), ("stop_token_ids", [-1]), ("min_new_tokens", -1), ("min_new_tokens", 300)],
)
def test_sampling_params_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}="):
        SamplingParams(**{field: value})


def test_rank_seeds_differ_across_ranks_and_consecutive_seeds():
    seeds = {rank_seed(s, r) for s in range(50) for r in range(8)}
    assert len(seeds) == 400  # seed s on rank r never replays seed s+1 on rank r-1
    assert rank_seed(3, 1) == rank_seed(3, 1)


# ----------------------------------------------------------------------------- filtering


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.equal(out, torch.tensor([[NEG, 3.0, 2.0, NEG], [NEG, NEG, 5.0, 1.0]]))
    assert torch.equal(filter_logits(logits, top_k=0), logits)  # 0 = off
    assert torch.equal(filter_logits(logits, top_k=4), logits)


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    # probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled column order)
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    logits = probs.log()
    # 0.5 < 0.6 -> need the 0.3 too; 0.5 + 0.3 = 0.8 >= 0.6 -> stop
    assert torch.isinf(filter_logits(logits, top_p=0.6)).tolist() == [[True, False, True, False]]
    # exactly reaching the mass: 0.5 + 0.3 = 0.8 -> the 0.15 is not needed
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[True, False, True, False]]
    assert torch.isinf(filter_logits(logits, top_p=0.81)).tolist() == [[False, False, True, False]]
    # the most likely token survives any top_p
    assert torch.isinf(filter_logits(logits, top_p=1e-6)).tolist() == [[True, False, True, True]]


# ----------------------------------------------------------------------------- token choice


def test_greedy_picks_argmax_and_reports_temperature_one_logprobs():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    tokens, logprobs = next_tokens(logits, SamplingParams(temperature=0))
    assert tokens.tolist() == [1, 0]
    z0 = math.log(1 + math.e**2 + math.e)
    z1 = math.log(math.e**3 + 2)
    assert logprobs.tolist() == pytest.approx([2.0 - z0, 3.0 - z1], abs=1e-6)


def test_banned_tokens_are_never_drawn_but_logprobs_stay_on_the_full_vocabulary():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    banned = torch.tensor([0, 1])
    tokens, logprobs = next_tokens(logits, SamplingParams(temperature=0), banned=banned)
    assert tokens.tolist() == [2, 2]  # the argmax among the allowed tokens
    z0, z1 = math.log(1 + math.e**2 + math.e), math.log(math.e**3 + 2)
    assert logprobs.tolist() == pytest.approx([1.0 - z0, 0.0 - z1], abs=1e-6)
    sampled, _ = next_tokens(logits.repeat(50, 1), SamplingParams(temperature=1.0), torch.Generator().manual_seed(0),
                             banned=banned)
    assert (sampled == 2).all()


def test_sampled_logprobs_are_full_vocabulary_log_softmax_at_the_temperature():
    """top-k / top-p restrict the draw but not the reported log-prob (the trainer knows neither)."""
    logits = torch.tensor([[1.0, 2.0, 0.5, -1.0]] * 64)
    params = SamplingParams(temperature=0.5, top_k=2)
    tokens, logprobs = next_tokens(logits, params, torch.Generator().manual_seed(0))
    assert set(tokens.tolist()) <= {0, 1} and set(tokens.tolist()) == {0, 1}
    expected = torch.log_softmax(logits / 0.5, dim=-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected, rtol=0, atol=1e-6)


def test_sampling_frequencies_follow_the_tempered_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(40_000, 3)
    tokens, _ = next_tokens(logits, SamplingParams(temperature=2.0), torch.Generator().manual_seed(1))
    freq = torch.bincount(tokens, minlength=3).float() / len(tokens)
    expected = torch.softmax(torch.tensor([0.0, 0.5, 1.0]), dim=0)
    assert torch.allclose(freq, expected, atol=0.01), (freq, expected)


def test_same_generator_seed_same_draws():
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    params = SamplingParams(temperature=1.0)
    a, _ = next_tokens(logits, params, torch.Generator().manual_seed(rank_seed(5, 0)))
    b, _ = next_tokens(logits, params, torch.Generator().manual_seed(rank_seed(5, 0)))
    c, _ = next_tokens(logits, params, torch.Generator().manual_seed(rank_seed(5, 1)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_draw_tokens_follows_the_probabilities_across_blocks_and_never_draws_zeros():
    """Two-level inverse CDF: blocks of 4 over a vocabulary of 10 (the last block padded), zeros in between."""
    p = torch.tensor([0.05, 0.0, 0.15, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.3])
    tokens = draw_tokens(p.expand(100_000, 10).contiguous(), torch.Generator().manual_seed(3), block=4)
    freq = torch.bincount(tokens, minlength=10).float() / len(tokens)
    assert torch.allclose(freq, p, atol=0.005), freq
    assert freq[[1, 3, 4, 5, 6, 7]].sum() == 0  # zero-probability tokens, and a whole zero block


def test_draw_tokens_is_the_inverse_cdf_of_its_two_uniforms():
    """By hand: the generator's two uniforms per row pick the block by mass, then the token inside it."""
    probs = torch.softmax(torch.randn(6, 12, generator=torch.Generator().manual_seed(0)), -1)
    got = draw_tokens(probs, torch.Generator().manual_seed(7), block=4)
    u = torch.rand((6, 2), generator=torch.Generator().manual_seed(7))
    for row in range(6):
        masses = probs[row].view(3, 4).sum(-1)
        block = int((masses.cumsum(0) <= u[row, 0] * masses.sum()).sum())
        inner = probs[row, 4 * block: 4 * block + 4]
        token = 4 * block + int((inner.cumsum(0) <= u[row, 1] * inner.sum()).sum())
        assert got[row] == token


def test_draw_tokens_falls_back_to_the_last_positive_entry_when_u_rounds_to_the_total():
    weights = torch.tensor([[0.2, 0.8, 0.0, 0.0]])
    from rlkit.rollout.sampling import _inverse_cdf

    assert _inverse_cdf(weights, torch.tensor([[1.0]])).item() == 1  # u * total == total: not the zero entries
    assert _inverse_cdf(weights, torch.tensor([[0.0]])).item() == 0


# ----------------------------------------------------------------------------- masks and layout


def test_mask_covers_tokens_through_the_first_stop_only():
    ids = torch.tensor([[5, 2, 7, 2, 9], [5, 6, 7, 8, 9], [2, 5, 5, 5, 5], [5, 5, 5, 5, 3]])
    mask = mask_through_first_stop(ids, [2, 3])
    assert mask.tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert mask_through_first_stop(ids, []).sum() == ids.numel()


def test_prompt_major_expansion_and_group_ids():
    assert expand_indices(3, 2).tolist() == [0, 0, 1, 1, 2, 2]
    assert group_ids_for(2, 3, first=10).tolist() == [10, 10, 10, 11, 11, 11]
