"""Hand-computed cases and loop-vs-vectorised equivalences for `rlkit.algos.core`.

Every expected number is worked out in the comment beside it.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from rlkit.algos import core

LN2, LN3 = math.log(2.0), math.log(3.0)


def close(a, b, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               atol=atol, rtol=0)


def test_core_imports_nothing_distributed():
    tree = ast.parse(Path(core.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    bad = [m for m in names if m.startswith(("ray", "torch.distributed", "rlkit.cluster", "rlkit.workers"))]
    assert not bad, bad


# ----------------------------------------------------------------------------- helpers


def test_masked_mean_ignores_padding_even_inf():
    x = torch.tensor([[1.0, 2.0, math.inf], [3.0, math.nan, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    close(core.masked_mean(x, mask), (1 + 2 + 3 + 5) / 4)  # 2.75
    close(core.masked_mean(x, mask, dim=-1), [1.5, 4.0])
    close(core.masked_mean(x, torch.zeros_like(mask)), 0.0)  # empty mask: 0, not nan


def test_masked_whiten_hand_values():
    x = torch.tensor([[2.0, 4.0, 6.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean 4, unbiased var (4 + 0 + 4) / 2 = 4, std 2 -> [-1, 0, 1], padding 0
    close(core.masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]], atol=1e-6)
    close(core.masked_whiten(x, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]], atol=1e-6)


def test_masked_whiten_matches_torch_on_valid_entries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 6, generator=g) > 0.3).long()
    valid = x[mask.bool()]
    expect = (valid - valid.mean()) / torch.sqrt(valid.var() + 1e-8)
    close(core.masked_whiten(x, mask)[mask.bool()], expect)


def test_logprobs_from_logits_hand_and_equivalence():
    logits = torch.tensor([[[0.0, LN3], [0.0, LN3]]])  # softmax = [1/4, 3/4]
    ids = torch.tensor([[1, 0]])
    close(core.logprobs_from_logits(logits, ids), [[math.log(0.75), math.log(0.25)]])

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=g, requires_grad=True)
    ids = torch.randint(0, 11, (3, 5), generator=g)
    ours = core.logprobs_from_logits(logits, ids)
    ref = torch.log_softmax(logits, -1).gather(-1, ids[..., None]).squeeze(-1)
    close(ours, ref, atol=1e-5)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    close(g1, g2, atol=1e-6)
    # bf16 logits go through float32 and come back float32
    low = logits.detach().bfloat16()
    out = core.logprobs_from_logits(low, ids)
    assert out.dtype == torch.float32
    close(out, torch.log_softmax(low.float(), -1).gather(-1, ids[..., None]).squeeze(-1), atol=1e-6)
    with pytest.raises(ValueError, match="do not match"):
        core.logprobs_from_logits(logits, ids[:, :3])


def test_entropy_from_logits():
    # uniform over 4 -> ln 4; p = [1/4, 3/4] -> ln 4 - (3/4) ln 3 = 0.5623351
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, LN3, -1e4, -1e4]]])
    close(core.entropy_from_logits(logits), [[math.log(4), math.log(4) - 0.75 * LN3]], atol=1e-5)


# ----------------------------------------------------------------------------- aggregation

LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [7.0, 7.0, 7.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # the last row is padding


@pytest.mark.parametrize(
    "mode, kwargs, expected",
    [
        ("token-mean", {}, (1 + 2 + 3 + 4) / 4),  # 2.5
        ("seq-mean-token-sum", {}, (6 + 4) / 2),  # 5
        ("seq-mean-token-mean", {}, (6 / 3 + 4 / 1) / 2),  # 3
        ("seq-mean-token-sum-norm", {}, (6 / 3 + 4 / 3) / 2),  # 5/3, norm_length = T = 3
        ("seq-mean-token-sum-norm", {"norm_length": 5}, (6 / 5 + 4 / 5) / 2),  # 1
        ("token-mean", {"global_tokens": 8}, 10 / 8),
        ("seq-mean-token-mean", {"global_seqs": 4}, 6 / 4),
    ],
)
def test_aggregate_hand_values(mode, kwargs, expected):
    close(core.aggregate(LOSS, MASK, mode, **kwargs), expected)


def test_aggregate_unknown_mode_and_normalisers():
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm"):
        core.aggregate(LOSS, MASK, "mean")
    with pytest.raises(ValueError, match="token-mean"):
        core.loss_normaliser("sum")
    assert core.loss_normaliser("token-mean") == "tokens"
    assert {core.loss_normaliser(m) for m in core.AGG_MODES[1:]} == {"seqs"}
    assert core.normaliser_count(MASK, "token-mean") == 4.0
    assert core.normaliser_count(MASK, "seq-mean-token-sum") == 2.0  # padding row not counted


@pytest.mark.parametrize("mode", core.AGG_MODES)
def test_global_count_micro_batches_sum_to_full_batch(mode):
    g = torch.Generator().manual_seed(2)
    B, T = 9, 6
    loss = torch.randn(B, T, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 0, 5, 2, 6, 4, 0])  # two padding rows
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    full = core.aggregate(loss, mask, mode, norm_length=T)
    # 2 "ranks" x unequal micro-batches; the worker sums local counts and all-reduces them.
    micro = [slice(0, 2), slice(2, 5), slice(5, 6), slice(6, 9)]
    key = "global_" + core.loss_normaliser(mode)
    count = sum(core.normaliser_count(mask[s], mode) for s in micro)
    total = sum(core.aggregate(loss[s], mask[s], mode, norm_length=T, **{key: count}) for s in micro)
    close(total, full, atol=1e-12)
    # without the global count the naive mean of micro-batch means is NOT the full-batch loss
    naive = sum(core.aggregate(loss[s], mask[s], mode, norm_length=T) for s in micro) / len(micro)
    assert abs(float(naive - full)) > 1e-3


def test_global_counts_pass_through_losses():
    g = torch.Generator().manual_seed(3)
    B, T = 6, 5
    lp, old, ref = (torch.randn(B, T, generator=g, dtype=torch.float64) * 0.3 for _ in range(3))
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) > 0.3).long()
    n_tok = core.normaliser_count(mask, "token-mean")
    n_seq = core.normaliser_count(mask, "seq-mean-token-mean")
    parts = [slice(0, 4), slice(4, 6)]
    calls = [
        lambda s, **kw: core.ppo_policy_loss(lp[s], old[s], adv[s], mask[s], dual_clip=3.0, **kw)[0],
        lambda s, **kw: core.gspo_policy_loss(lp[s], old[s], adv[s], mask[s], agg="seq-mean-token-mean", **kw)[0],
        lambda s, **kw: core.value_loss(lp[s], old[s], adv[s], mask[s], **kw)[0],
        lambda s, **kw: core.kl_loss(lp[s], ref[s], mask[s], "k3", **kw)[0],
        lambda s, **kw: core.entropy_loss(lp[s].abs(), mask[s], **kw)[0],
    ]
    for i, fn in enumerate(calls):
        kw = {"global_seqs": n_seq} if i == 1 else {"global_tokens": n_tok}
        close(sum(fn(s, **kw) for s in parts), fn(slice(0, B)), atol=1e-12)


# ----------------------------------------------------------------------------- advantages


def test_gae_hand_values():
    # gamma = lam = 1: A_t = (sum of future rewards) - V_t, returns = 1 everywhere
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = core.gae(r, v, torch.ones(1, 3))
    close(adv, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])
    # gamma = lam = 0.5, r = [1, 2], V = [1, 1], third token is padding with garbage:
    # delta_1 = 2 + 0 - 1 = 1, A_1 = 1; delta_0 = 1 + 0.5 * 1 - 1 = 0.5, A_0 = 0.5 + 0.25 * 1 = 0.75
    r = torch.tensor([[1.0, 2.0, 50.0]])
    v = torch.tensor([[1.0, 1.0, 40.0]])
    adv, ret = core.gae(r, v, torch.tensor([[1, 1, 0]]), gamma=0.5, lam=0.5)
    close(adv, [[0.75, 1.0, 0.0]])
    close(ret, [[1.75, 2.0, 0.0]])


def _gae_loop(r, v, mask, gamma, lam):
    """Reference: per row, the plain GAE recursion over the list of valid tokens only."""
    adv = torch.zeros_like(r)
    for b in range(r.shape[0]):
        idx = [t for t in range(r.shape[1]) if mask[b, t]]
        running = 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_v = float(v[b, idx[k + 1]]) if k + 1 < len(idx) else 0.0
            running = float(r[b, t]) + gamma * next_v - float(v[b, t]) + gamma * lam * running
            adv[b, t] = running
    return adv


def test_gae_matches_python_loop_with_holes():
    g = torch.Generator().manual_seed(4)
    r = torch.randn(5, 7, generator=g, dtype=torch.float64)
    v = torch.randn(5, 7, generator=g, dtype=torch.float64)
    mask = (torch.rand(5, 7, generator=g) > 0.3).long()  # holes anywhere, like masked tool output
    adv, ret = core.gae(r, v, mask, gamma=0.9, lam=0.8)
    expect = _gae_loop(r, v, mask, 0.9, 0.8)
    close(adv, expect, atol=1e-12)
    close(ret, (expect + v) * mask, atol=1e-12)


def test_reinforce_pp_hand_values():
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # gamma 0.5: G = [0.25, 0.5, 1] and [0.5, 1, pad]
    adv, ret = core.reinforce_pp_advantages(r, mask, gamma=0.5)
    close(ret, [[0.25, 0.5, 1.0], [0.5, 1.0, 0.0]])
    # whitened over the 5 valid values: mean 3.25 / 5 = 0.65; squared deviations
    # .16 + .0225 + .1225 + .0225 + .1225 = 0.45, unbiased var 0.45 / 4 = 0.1125
    std = math.sqrt(0.1125 + 1e-8)
    close(adv, [[(0.25 - 0.65) / std, (0.5 - 0.65) / std, (1 - 0.65) / std], [(0.5 - 0.65) / std, (1 - 0.65) / std, 0]])


SCORES = torch.tensor([1.0, 0.0, 1.0, 1.0, 5.0, 2.0, 4.0])
GROUPS = torch.tensor([7, 7, 7, 7, 3, 9, 9])  # sizes 4, 1, 2
GMASK = torch.tensor([[1, 1, 0]] * 7)


def test_grpo_hand_values():
    # group 7: mean 0.75, unbiased std sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5 -> [0.5, -1.5, 0.5, 0.5]
    # group 3: one sample -> 0; group 9: mean 3, std sqrt(2) -> [-1/sqrt2, 1/sqrt2]
    eps = 1e-6
    expect = [0.25 / (0.5 + eps), -0.75 / (0.5 + eps), 0.25 / (0.5 + eps), 0.25 / (0.5 + eps), 0.0,
              -1 / (math.sqrt(2) + eps), 1 / (math.sqrt(2) + eps)]
    adv = core.grpo_advantages(SCORES, GROUPS, GMASK)
    close(adv[:, 0], expect)
    close(adv[:, 1], expect)
    assert (adv[:, 2] == 0).all()
    # Dr.GRPO: mean-centred only
    close(core.grpo_advantages(SCORES, GROUPS, GMASK, norm_by_std=False)[:, 0], [0.25, -0.75, 0.25, 0.25, 0, -1, 1])


def test_rloo_and_remax_hand_values():
    # group 7: 1 - (0+1+1)/3 = 1/3, 0 - 1 = -1; group 3 alone: 0; group 9: 2 - 4 = -2, 4 - 2 = 2
    adv = core.rloo_advantages(SCORES, GROUPS, GMASK)
    close(adv[:, 0], [1 / 3, -1, 1 / 3, 1 / 3, 0, -2, 2])
    assert (adv[:, 2] == 0).all()
    adv = core.remax_advantages(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([[1, 0], [1, 1]]))
    close(adv, [[2.0, 0.0], [0.0, 0.0]])


def test_group_advantages_match_per_group_loop():
    g = torch.Generator().manual_seed(5)
    B = 24
    scores = torch.randn(B, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 8, (B,), generator=g) * 11  # non-contiguous ids, some groups of one
    mask = torch.ones(B, 2)
    grpo = core.grpo_advantages(scores, groups, mask)[:, 0]
    drgrpo = core.grpo_advantages(scores, groups, mask, norm_by_std=False)[:, 0]
    rloo = core.rloo_advantages(scores, groups, mask)[:, 0]
    for gid in groups.unique():
        rows = (groups == gid).nonzero().flatten()
        s = scores[rows]
        if len(rows) == 1:
            assert grpo[rows].item() == drgrpo[rows].item() == rloo[rows].item() == 0.0
            continue
        close(grpo[rows], (s - s.mean()) / (s.std() + 1e-6), atol=1e-12)
        close(drgrpo[rows], s - s.mean(), atol=1e-12)
        for j, i in enumerate(rows):
            close(rloo[i], s[j] - torch.cat([s[:j], s[j + 1:]]).mean(), atol=1e-12)
        # RLOO is Dr.GRPO scaled by n / (n - 1)
        n = len(rows)
        close(rloo[rows], drgrpo[rows] * n / (n - 1), atol=1e-12)


def test_safe_rlhf_and_lagrange():
    close(core.safe_rlhf_advantages(torch.tensor(2.0), torch.tensor(1.0), 1.0), 0.5)  # (2 - 1) / 2
    close(core.safe_rlhf_advantages(torch.tensor(2.0), torch.tensor(1.0), 0.0), 2.0)
    close(core.lagrange_update(1.0, mean_cost=0.5, cost_limit=0.2, lr=0.1), 1.03)  # 1 + 0.1 * 0.3
    assert core.lagrange_update(0.01, mean_cost=0.0, cost_limit=0.5, lr=0.1) == 0.0  # projected
    close(core.lagrange_update(1.0, 0.5, 0.2, 0.1, log_space=True), math.exp(0.03))  # ln lam += 0.1 * 1 * 0.3
    close(core.lagrange_update(2.0, 0.0, 0.5, 0.1, log_space=True), 2.0 * math.exp(-0.1))  # 0.1 * 2 * -0.5


# ----------------------------------------------------------------------------- DAPO


def test_overlong_penalty():
    # max_len 10, buffer 4 -> soft zone (6, 10]: (6 - L) / 4
    lengths = torch.tensor([5, 6, 8, 10, 12])
    close(core.overlong_penalty(lengths, 10, 4), [0, 0, -0.5, -1, -1])
    close(core.overlong_penalty(lengths, 10, 4, penalty=2.0), [0, 0, -1, -2, -2])
    close(core.overlong_penalty(lengths, 10, 0), [0, 0, 0, 0, -1])
    with pytest.raises(ValueError, match="buffer"):
        core.overlong_penalty(lengths, 10, 11)


def test_groups_with_variance():
    scores = torch.tensor([1.0, 1.0, 0.0, 5.0, 2.0, 2.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3])
    assert core.groups_with_variance(scores, groups).tolist() == [True, True, True, False, False, False, True, True]


# ----------------------------------------------------------------------------- KL


def test_kl_penalty_hand_values():
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    # log_r = ln(0.25 / 0.5) = -ln 2
    close(core.kl_penalty(lp, ref, "k1"), [[LN2]])
    close(core.kl_penalty(lp, ref, "k2"), [[0.5 * LN2**2]])  # 0.2402265
    close(core.kl_penalty(lp, ref, "k3"), [[0.5 - 1 + LN2]])  # 0.1931472
    close(core.kl_penalty(lp, ref, "abs"), [[LN2]])
    with pytest.raises(ValueError, match="k1, k2, k3, abs"):
        core.kl_penalty(lp, ref, "k4")


def test_k1_k3_are_unbiased_exactly():
    # E_{x ~ p}[k(x)] = KL(p || q) for k1 and k3 (exact expectation over a 3-way categorical)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    kl = float((p * (p / q).log()).sum())
    for kind in ("k1", "k3"):
        close((p * core.kl_penalty(p.log(), q.log(), kind)).sum(), kl, atol=1e-12)
    assert (core.kl_penalty(p.log(), q.log(), "k3") >= 0).all()


def test_kl_reward():
    scores = torch.tensor([1.0, 2.0, 3.0])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [0, 0, 0]])
    kl = torch.tensor([[0.5, 0.5, 9.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    # coef 0.1: -0.05 per valid token, score on the last valid token; padding row gets nothing
    close(core.kl_reward(scores, mask, kl, coef=0.1), [[-0.05, 0.95, 0], [-0.05, -0.05, 1.95], [0, 0, 0]])
    close(core.kl_reward(scores, mask), [[0, 1, 0], [0, 0, 2], [0, 0, 0]])


def test_kl_controllers():
    fixed = core.FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = core.AdaptiveKLController(0.2, target=6.0, horizon=10000)
    ctl.update(9.0, 100)  # error 0.5 clipped to 0.2 -> * (1 + 0.2 * 100 / 10000) = 1.002
    close(ctl.value, 0.2004)
    ctl.update(6.6, 100)  # error 0.1 -> * 1.001
    close(ctl.value, 0.2004 * 1.001)
    ctl.update(0.0, 100)  # error -1 clipped to -0.2 -> * 0.998
    close(ctl.value, 0.2004 * 1.001 * 0.998)
    other = core.AdaptiveKLController(1.0, 1.0, 1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == ctl.value
    with pytest.raises(ValueError, match="target"):
        core.AdaptiveKLController(0.1, target=0.0, horizon=1)


def test_kl_and_entropy_loss():
    lp, ref = torch.tensor([[math.log(0.5), 0.0]]), torch.tensor([[math.log(0.25), 5.0]])
    loss, stats = core.kl_loss(lp, ref, torch.tensor([[1, 0]]), "k3")
    close(loss, LN2 - 0.5)
    close(stats["kl"], LN2 - 0.5)
    loss, stats = core.entropy_loss(torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]]))
    close(loss, -2.0)
    close(stats["entropy"], 2.0)


# ----------------------------------------------------------------------------- policy / value losses


def _ppo_inputs(ratios, advs):
    old = torch.zeros(1, len(ratios), dtype=torch.float64)
    lp = torch.tensor([[math.log(r) for r in ratios]], dtype=torch.float64, requires_grad=True)
    return lp, old, torch.tensor([advs], dtype=torch.float64), torch.ones(1, len(ratios))


def test_ppo_policy_loss_hand_values():
    lp, old, adv, mask = _ppo_inputs([1.5, 0.5, 1.5, 0.5], [1, 1, -1, -1])
    # t0: max(-1.5, -1.2) = -1.2 (clipped); t1: max(-0.5, -0.8) = -0.5; t2: max(1.5, 1.2) = 1.5;
    # t3: max(0.5, 0.8) = 0.8 (clipped). Mean (-1.2 - 0.5 + 1.5 + 0.8) / 4 = 0.15
    loss, stats = core.ppo_policy_loss(lp, old, adv, mask)
    close(loss, 0.15)
    close(stats["clipfrac"], 0.5)
    close(stats["ratio_mean"], 1.0)
    close(stats["ratio_max"], 1.5)
    # approx_kl = mean((r - 1) - ln r): 1.5 -> 0.0945349, 0.5 -> 0.1931472
    close(stats["approx_kl"], (0.5 - math.log(1.5) + -0.5 + LN2) / 2)
    # d loss / d logp = -A r / 4 where unclipped, 0 where clipped: [0, -0.125, 0.375, 0]
    (grad,) = torch.autograd.grad(loss, lp)
    close(grad, [[0.0, -0.125, 0.375, 0.0]])
    # clip-higher: t0 now max(-1.5, -1.28) = -1.28 -> (-1.28 - 0.5 + 1.5 + 0.8) / 4 = 0.13
    close(core.ppo_policy_loss(lp, old, adv, mask, clip_high=0.28)[0], 0.13)


def test_ppo_dual_clip():
    lp, old, adv, mask = _ppo_inputs([1.5, 4.0, 4.0], [-1, -1, 1])
    # t0: 1.5 (< bound 3); t1: max(4, 1.2) = 4 -> dual-clipped to 3; t2 (A > 0): max(-4, -1.2) = -1.2
    loss, stats = core.ppo_policy_loss(lp, old, adv, mask, dual_clip=3.0)
    close(loss, (1.5 + 3.0 - 1.2) / 3)
    close(stats["dual_clipfrac"], 1 / 3)
    close(core.ppo_policy_loss(lp, old, adv, mask)[0], (1.5 + 4.0 - 1.2) / 3)
    with pytest.raises(ValueError, match="dual_clip"):
        core.ppo_policy_loss(lp, old, adv, mask, dual_clip=0.9)


def test_gspo_hand_values():
    lp = torch.tensor([[LN2, 0.0], [0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(2, 2, dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(2, 2)
    # s_0 = exp(ln2 / 2) = sqrt 2 -> clipped to 1.2, token loss -1.2; s_1 = 1 -> token loss 1
    loss, stats = core.gspo_policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    close(loss, (-1.2 + 1.0) / 2)
    close(stats["clipfrac"], 0.5)
    close(stats["seq_ratio_mean"], (math.sqrt(2) + 1) / 2)
    # seq 0 clipped -> no gradient; seq 1: d/dlogp_t (-A s) = 1, times 1/(2 seqs * 2 tokens)
    (grad,) = torch.autograd.grad(loss, lp)
    close(grad, [[0, 0], [0.25, 0.25]])
    # per-token advantages: each token's gradient uses its own advantage (stop-gradient form),
    # s = 1, loss = (-1 * s - 3 * s) / 2 -> d/dlogp_t = -A_t / 2 = [-0.5, -1.5]
    # (the un-detached sequence ratio would give -(1 + 3) / 2 * 1/2 = -1 on both tokens)
    lp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    loss, _ = core.gspo_policy_loss(lp, torch.zeros(1, 2), torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))
    close(loss, -2.0)
    close(torch.autograd.grad(loss, lp)[0], [[-0.5, -1.5]])


def test_gspo_token_form_matches_sequence_objective():
    # With one advantage per sequence, GSPO-token has the value AND gradient of sequence-level GSPO (eq. 7).
    g = torch.Generator().manual_seed(6)
    B, T = 6, 5
    lp = (torch.randn(B, T, generator=g, dtype=torch.float64) * 0.05).requires_grad_()
    old = torch.randn(B, T, generator=g, dtype=torch.float64) * 0.05 + lp.detach()
    seq_adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.arange(T)[None] < torch.tensor([5, 3, 1, 4, 5, 2])[:, None]).long()
    loss, _ = core.gspo_policy_loss(lp, old, seq_adv[:, None].expand(B, T), mask, clip_low=0.01, clip_high=0.01)
    s = torch.exp(core.masked_sum(lp - old, mask, dim=-1) / mask.sum(-1))  # (B,), gradient flows
    seq_loss = torch.maximum(-seq_adv * s, -seq_adv * s.clamp(0.99, 1.01)).mean()
    assert 0 < int((s - 1).abs().gt(0.01).sum()) < B  # some sequences clipped, some not
    close(loss, seq_loss, atol=1e-12)
    close(torch.autograd.grad(loss, lp)[0], torch.autograd.grad(seq_loss, lp)[0], atol=1e-12)


def test_value_loss_hand_values():
    values = torch.tensor([[1.5, 0.0, 1.5]])
    old = torch.tensor([[1.0, 0.0, 1.0]])
    returns = torch.tensor([[1.0, 1.0, 2.0]])
    # t0: err 0.25, clipped V 1.2 -> 0.04, max 0.25 -> 0.125; t1: 1 -> 0.5;
    # t2: err 0.25, clipped V 1.2 -> 0.64 (larger, counted) -> 0.32. Mean 0.945 / 3 = 0.315
    loss, stats = core.value_loss(values, old, returns, torch.ones(1, 3))
    close(loss, 0.315)
    close(stats["clipfrac"], 1 / 3)
    close(stats["value_mean"], 1.0)
    close(core.value_loss(values, old, returns, torch.ones(1, 3), clip=None)[0], (0.125 + 0.5 + 0.125) / 3)
