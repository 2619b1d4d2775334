"""The pure RL math: advantage estimators, policy/value losses, KL terms, loss aggregation.

Every function here is a small pure tensor function. Unless noted, per-token tensors are
`(B, T)` over the response tokens and `response_mask` `(B, T)` is 1 on real response tokens
(EOS included) and 0 on padding. Values at masked positions are ignored and outputs are zero
there, so padding rows added by `Batch.pad_to_multiple` carry no weight.

This module never imports anything distributed (no ray, no torch.distributed, no
rlkit.cluster): the FSDP worker normalises losses by global counts by passing
`global_tokens` / `global_seqs` (see `aggregate` and `loss_normaliser`).

References: PPO (Schulman et al. 2017, arXiv 1707.06347); GAE (Schulman et al. 2016,
arXiv 1506.02438); GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300); Dr.GRPO (Liu et
al. 2025, arXiv 2503.20783); DAPO (Yu et al. 2025, arXiv 2503.14476); GSPO (Zheng et al.
2025, arXiv 2507.18071); ReMax (Li et al. 2023, arXiv 2310.10505); RLOO (Ahmadian et al.
2024, arXiv 2402.14740); REINFORCE++ (Hu 2025, arXiv 2501.03262); Safe-RLHF (Dai et al.
2023, arXiv 2310.12773); adaptive KL (Ziegler et al. 2019, arXiv 1909.08593); dual-clip PPO
(Ye et al. 2020, arXiv 1912.09729); k1/k2/k3 KL estimators (J. Schulman, "Approximating KL
Divergence", 2020, http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_KINDS = ("k1", "k2", "k3", "abs")

# Log-ratios are clamped before exp(): one badly off token must not turn the loss into inf.
_MAX_LOG_RATIO = 20.0

Stats = dict[str, Tensor]


# ----------------------------------------------------------------------------- helpers


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `x` where `mask` is 1. `torch.where`, not `x * mask`: padding may hold inf/nan."""
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `x` over positions where `mask` is 1 (all of them, or along `dim`).

    An empty mask gives 0, not nan (a micro-batch of padding rows must not poison the loss).
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Unbiased (Bessel-corrected, like `torch.var`) variance over the valid positions; 0 if fewer than 2."""
    n = mask.to(x.dtype).sum()
    centred = x - masked_mean(x, mask)
    return masked_sum(centred**2, mask) / (n - 1).clamp_min(1)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """`(x - mean) / sqrt(var + eps)` with the mean and unbiased variance taken over valid positions.

    `shift_mean=False` rescales only (the mean is added back). Zero on masked positions.
    """
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, torch.zeros((), dtype=out.dtype, device=out.device))


def logprobs_from_logits(logits: Tensor, ids: Tensor) -> Tensor:
    """Log-probability of `ids` under `logits`: `log_softmax(logits)[ids]`.

    logits `(B, T, V)` (any leading dims), ids `(B, T)` long -> `(B, T)`.
    Memory: fp32/fp64 use `gather - logsumexp`, so autograd keeps no second `(B, T, V)` tensor
    (backward needs only the logits, already held). bf16/fp16 are too coarse for log-probs (PPO
    ratios are built from them): they go through float32 in chunks of 1024 positions, which
    bounds the extra memory without grad (old/ref log-probs); under grad the float32 chunks are
    kept for backward. The result is then float32.
    """
    if logits.shape[:-1] != ids.shape:
        raise ValueError(f"logprobs_from_logits: logits {tuple(logits.shape)} do not match ids {tuple(ids.shape)}")
    if logits.dtype in (torch.float32, torch.float64):
        picked = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return picked - torch.logsumexp(logits, dim=-1)
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    flat_ids = ids.reshape(-1)
    rows = [
        torch.log_softmax(row.float(), dim=-1).gather(-1, row_ids.unsqueeze(-1)).squeeze(-1)
        for row, row_ids in zip(flat_logits.split(1024), flat_ids.split(1024))
    ]
    return torch.cat(rows).reshape(ids.shape)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical `softmax(logits)`: `logsumexp(z) - sum(p * z)`. `(B, T, V) -> (B, T)`.

    Logits must be finite (a -inf logit gives 0 * -inf = nan); bf16/fp16 are computed in float32.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


# ----------------------------------------------------------------------------- aggregation


def loss_normaliser(mode: str) -> str:
    """Which global count `aggregate(mode)` divides by: "tokens" (token-mean) or "seqs" (the seq-mean modes)."""
    _check_mode(mode)
    return "tokens" if mode == "token-mean" else "seqs"


def normaliser_count(response_mask: Tensor, mode: str) -> float:
    """This micro-batch's share of the count `aggregate(mode)` divides by.

    Tokens: valid tokens. Seqs: rows with at least one valid token (padding rows, whose mask is
    all zero, do not count). The worker sums this over micro-batches and all-reduces over ranks
    to get `global_tokens` / `global_seqs`.
    """
    if loss_normaliser(mode) == "tokens":
        return float(response_mask.sum())
    return float((response_mask.sum(-1) > 0).sum())


def aggregate(
    loss: Tensor,
    response_mask: Tensor,
    mode: str = "token-mean",
    *,
    norm_length: float | None = None,
    global_tokens: float | None = None,
    global_seqs: float | None = None,
) -> Tensor:
    """Reduce a per-token loss `(B, T)` to a scalar.

    - `token-mean`: sum over all valid tokens / number of valid tokens (DAPO's token-level loss).
    - `seq-mean-token-sum`: per sequence, sum over its tokens; mean over sequences.
    - `seq-mean-token-mean`: per sequence, mean over its tokens; mean over sequences (GRPO paper).
    - `seq-mean-token-sum-norm`: per sequence, token sum / `norm_length` (a constant, default T);
      mean over sequences (Dr.GRPO: no length bias). In distributed training pass the configured
      max response length: a local T differs between micro-batches.

    With `global_tokens` / `global_seqs` the sum over this micro-batch is divided by the global
    count instead of the local one, so summing the results over every micro-batch and rank gives
    the loss of the whole batch (see `loss_normaliser`, `normaliser_count`). Sequences are the
    rows with at least one valid token.
    """
    _check_mode(mode)
    mask = response_mask.to(loss.dtype)
    if mode == "token-mean":
        return masked_sum(loss, mask) / _count(mask.sum(), global_tokens)
    seq_sum = masked_sum(loss, mask, dim=-1)  # (B,)
    if mode == "seq-mean-token-mean":
        seq_loss = seq_sum / mask.sum(-1).clamp_min(1)
    elif mode == "seq-mean-token-sum-norm":
        seq_loss = seq_sum / float(loss.shape[-1] if norm_length is None else norm_length)
    else:
        seq_loss = seq_sum
    valid_seqs = mask.sum(-1) > 0
    return masked_sum(seq_loss, valid_seqs) / _count(valid_seqs.sum().to(loss.dtype), global_seqs)


def _count(local: Tensor, global_count: float | None) -> Tensor:
    """The divisor: the global count when the worker gives one, else the local one; at least 1."""
    if global_count is not None:
        local = torch.as_tensor(global_count, dtype=local.dtype, device=local.device)
    return local.clamp_min(1)


def _check_mode(mode: str) -> None:
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; allowed: {', '.join(AGG_MODES)}")


# ----------------------------------------------------------------------------- advantages


def gae(
    token_rewards: Tensor, values: Tensor, response_mask: Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 11-16).

    `delta_t = r_t + gamma V_{t+1} - V_t`, `A_t = delta_t + gamma lam A_{t+1}`, `returns = A + V`.
    Inputs `(B, T)`; returns `(advantages, returns)`, both `(B, T)`, zero on masked tokens.
    Masked tokens are skipped (the recursion links each valid token to the next valid one, so masks
    with holes work); after the last valid token the episode ends (`V = 0`, truncation included).
    Not whitened: the algorithm decides (`masked_whiten`).
    """
    mask = response_mask.to(values.dtype)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_adv = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        advantages[:, t] = adv_t * m
        # On a masked token carry the recursion through unchanged.
        next_adv = torch.where(m.bool(), adv_t, next_adv)
        next_value = torch.where(m.bool(), values[:, t], next_value)
    returns = (advantages + values) * mask
    return advantages, returns


def discounted_returns(token_rewards: Tensor, response_mask: Tensor, gamma: float = 1.0) -> Tensor:
    """`G_t = r_t + gamma G_{t+1}` over valid tokens (masked tokens skipped). `(B, T) -> (B, T)`, zero on masked."""
    mask = response_mask.to(token_rewards.dtype)
    running = torch.zeros_like(token_rewards[:, 0])  # (B,)
    returns = torch.zeros_like(token_rewards)
    for t in reversed(range(token_rewards.shape[1])):
        g = token_rewards[:, t] + gamma * running
        running = torch.where(mask[:, t].bool(), g, running)
        returns[:, t] = g * mask[:, t]
    return returns


def reinforce_pp_advantages(
    token_rewards: Tensor, response_mask: Tensor, gamma: float = 1.0
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): discounted return, whitened over the batch's valid tokens.

    `token_rewards` `(B, T)` usually carry the score on the last token minus a per-token KL
    penalty (`kl_reward`). Returns `(advantages, returns)`, both `(B, T)`.
    """
    returns = discounted_returns(token_rewards, response_mask, gamma)
    return masked_whiten(returns, response_mask), returns


def _group_index(group_id: Tensor) -> tuple[Tensor, Tensor]:
    """Dense group index `(B,)` in [0, G) and the size of each group `(G,)`."""
    _, inverse, counts = torch.unique(group_id, return_inverse=True, return_counts=True)
    return inverse, counts


def _group_sum(x: Tensor, inverse: Tensor, num_groups: int) -> Tensor:
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, inverse, x)


def _broadcast(seq_adv: Tensor, response_mask: Tensor) -> Tensor:
    """Sequence advantages `(B,)` -> `(B, T)` on valid tokens, zero on masked."""
    return seq_adv[:, None] * response_mask.to(seq_adv.dtype)


def grpo_advantages(
    scores: Tensor, group_id: Tensor, response_mask: Tensor, norm_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO outcome advantages (DeepSeekMath, Shao et al. 2024, sec. 4.1.2).

    Per group (the samples of one prompt): `(s - mean) / (std + eps)` with the unbiased std
    (`torch.std` default). `norm_by_std=False` is Dr.GRPO (Liu et al. 2025): `s - mean`.
    A group of one sample has advantage 0 (its mean is itself; its std, undefined, is taken as 0).
    scores `(B,)`, group_id `(B,)` long -> `(B, T)`, the sequence advantage on every valid token.
    """
    scores = scores.float() if not scores.is_floating_point() else scores
    inverse, counts = _group_index(group_id)
    n = counts.to(scores.dtype)
    mean = _group_sum(scores, inverse, len(counts)) / n  # (G,)
    centred = scores - mean[inverse]  # (B,)
    if not norm_by_std:
        return _broadcast(centred, response_mask)
    var = _group_sum(centred**2, inverse, len(counts)) / (n - 1).clamp_min(1)  # n == 1 -> 0
    return _broadcast(centred / (var.sqrt()[inverse] + eps), response_mask)


def rloo_advantages(scores: Tensor, group_id: Tensor, response_mask: Tensor) -> Tensor:
    """RLOO (Ahmadian et al. 2024, eq. 6): score minus the mean score of the OTHER samples of its group.

    `s_i - (sum_g - s_i) / (n - 1)`. A group of one sample has no baseline: advantage 0.
    scores `(B,)`, group_id `(B,)` -> `(B, T)`.
    """
    scores = scores.float() if not scores.is_floating_point() else scores
    inverse, counts = _group_index(group_id)
    n = counts.to(scores.dtype)[inverse]  # (B,)
    others_mean = (_group_sum(scores, inverse, len(counts))[inverse] - scores) / (n - 1).clamp_min(1)
    adv = torch.where(n > 1, scores - others_mean, torch.zeros_like(scores))
    return _broadcast(adv, response_mask)


def remax_advantages(scores: Tensor, baseline_scores: Tensor, response_mask: Tensor) -> Tensor:
    """ReMax (Li et al. 2023, alg. 1): score minus the score of the greedy response to the same prompt.

    scores `(B,)`, baseline_scores `(B,)` -> `(B, T)`.
    """
    return _broadcast(scores - baseline_scores, response_mask)


def safe_rlhf_advantages(adv_r: Tensor, adv_c: Tensor, lam: float | Tensor) -> Tensor:
    """Safe-RLHF (Dai et al. 2023, eq. 12): `(A_r - lam A_c) / (1 + lam)` (reward minus cost advantage)."""
    return (adv_r - lam * adv_c) / (1 + lam)


def lagrange_update(
    lam: float, mean_cost: float, cost_limit: float, lr: float, log_space: bool = False
) -> float:
    """One dual-ascent step on the Safe-RLHF Lagrange multiplier; the result is >= 0.

    Plain (default): `max(0, lam + lr (J_C - d))`, projected onto lam >= 0; it can reach 0 and
    grow back. `log_space=True` follows the paper (Dai et al. 2023, sec. 3.3):
    `ln lam <- ln lam + lr lam (J_C - d)`: lam stays positive, but a lam of 0 stays 0.
    `mean_cost` is the batch mean cost J_C, `cost_limit` the threshold d.
    """
    violation = float(mean_cost) - float(cost_limit)
    if log_space:
        return float(lam) * math.exp(lr * float(lam) * violation)
    return max(0.0, float(lam) + lr * violation)


# ----------------------------------------------------------------------------- DAPO pieces


def overlong_penalty(response_lengths: Tensor, max_len: int, buffer: int, penalty: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment (Yu et al. 2025, eq. 13), added to the scores.

    0 while `L <= max_len - buffer`; `penalty * ((max_len - buffer) - L) / buffer` inside the
    buffer (linear from 0 to -penalty); `-penalty` beyond `max_len`. `(B,) -> (B,)` float.
    """
    if not 0 <= buffer <= max_len:
        raise ValueError(f"overlong_penalty: buffer={buffer} must be in [0, max_len={max_len}]")
    lengths = response_lengths.float()
    start = max_len - buffer
    soft = (start - lengths) / buffer if buffer > 0 else torch.zeros_like(lengths)
    out = torch.where(lengths <= start, torch.zeros_like(lengths), soft)
    out = torch.where(lengths > max_len, torch.full_like(lengths, -1.0), out)
    return out * penalty


def groups_with_variance(scores: Tensor, group_id: Tensor) -> Tensor:
    """DAPO dynamic sampling: True for the rows whose group has at least two distinct scores.

    Groups where every sample scored the same (all right, all wrong, or a single sample) give zero
    GRPO advantage and are filtered out. `(B,), (B,) -> (B,)` bool.
    """
    inverse, counts = _group_index(group_id)
    G = len(counts)
    hi = torch.full((G,), -math.inf, dtype=torch.float64, device=scores.device)
    lo = torch.full((G,), math.inf, dtype=torch.float64, device=scores.device)
    hi = hi.scatter_reduce(0, inverse, scores.double(), reduce="amax")
    lo = lo.scatter_reduce(0, inverse, scores.double(), reduce="amin")
    return (hi > lo)[inverse]


# ----------------------------------------------------------------------------- KL


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's blog). `(B, T) -> (B, T)`.

    With `log_r = ref_logprobs - logprobs`: `k1 = -log_r` (unbiased, high variance, can be < 0);
    `k2 = log_r^2 / 2` (biased, low variance); `k3 = (e^log_r - 1) - log_r` (unbiased, low variance,
    always >= 0; GRPO's KL term); `abs = |log_r|`. Not masked: the caller aggregates.
    """
    log_r = ref_logprobs - logprobs
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r**2
    if kind == "k3":
        log_r = log_r.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.expm1(log_r) - log_r
    if kind == "abs":
        return log_r.abs()
    raise ValueError(f"unknown KL estimator kind {kind!r}; allowed: {', '.join(KL_KINDS)}")


def kl_reward(scores: Tensor, response_mask: Tensor, kl: Tensor | None = None, coef: float = 0.0) -> Tensor:
    """Token rewards `(B, T)`: each sequence score on its last valid token, minus `coef * kl` on every valid token.

    scores `(B,)`; kl `(B, T)` per-token (from `kl_penalty`) or None. The reward shaping of
    InstructGPT-style PPO (Ziegler et al. 2019; Ouyang et al. 2022) and REINFORCE++. Zero on
    masked tokens; a row with no valid token gets nothing.
    """
    mask = response_mask.to(scores.dtype if scores.is_floating_point() else torch.float32)
    # The last valid token is the one with exactly one valid token at or after it.
    last = mask * (mask.flip(-1).cumsum(-1).flip(-1) == 1)  # (B, T) one-hot per row
    rewards = scores.to(mask.dtype)[:, None] * last
    if kl is not None:
        rewards = rewards - coef * torch.where(mask.bool(), kl, torch.zeros_like(kl))
    return rewards


def kl_penalized_scores(scores: Tensor, kl: Tensor, response_mask: Tensor, coef: float) -> Tensor:
    """Sequence scores `(B,)` minus `coef` times each row's summed per-token KL `(B, T)` over its valid tokens.

    The outcome-level form of a KL penalty in the reward (what `kl_reward` spreads over tokens, summed
    back per sequence): GRPO-family estimators see one number per sample, so with the KL in the reward
    they normalise `score - coef * sum_t kl_t` (verl's `use_kl_in_reward` with an outcome estimator).
    """
    summed = masked_sum(kl.to(torch.float32), response_mask, dim=-1)  # (B,)
    return scores.to(torch.float32) - coef * summed


class FixedKLController:
    """A constant KL coefficient. Same interface as `AdaptiveKLController`."""

    def __init__(self, coef: float):
        self.value = float(coef)  # the current KL coefficient

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, sec. 2.2): steer the observed KL towards `target`.

    `e = clip(KL / target - 1, -0.2, 0.2)`; `coef <- coef * (1 + e * n_steps / horizon)`.
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"AdaptiveKLController: target={target} and horizon={horizon} must be > 0")
        self.value = float(init_coef)  # the current KL coefficient
        self.target = float(target)  # the KL per sequence we aim for
        self.horizon = float(horizon)  # samples over which a full proportional correction is applied

    def update(self, current_kl: float, n_steps: int) -> None:
        """`current_kl`: the measured mean KL of the last batch; `n_steps`: samples in it."""
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


# ----------------------------------------------------------------------------- losses


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token-mean",
    **agg_kwargs,
) -> tuple[Tensor, Stats]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7) with asymmetric clipping (DAPO's clip-higher).

    Per token: `max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high))`, `r = exp(logp - old_logp)`.
    `dual_clip` (> 1, Ye et al. 2020) also bounds the loss of negative-advantage tokens by
    `-A * dual_clip`. Inputs `(B, T)`; `agg` and `agg_kwargs` (`norm_length`, `global_tokens`,
    `global_seqs`) go to `aggregate`. Stats (detached 0-d tensors, local to this micro-batch):
    `clipfrac`, `dual_clipfrac`, `approx_kl` (k3 estimate of KL(old || new)), `ratio_mean`, `ratio_max`.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"ppo_policy_loss: dual_clip={dual_clip} must be > 1")
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    dual_clipped = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (loss > bound)
        loss = torch.where(dual_clipped, bound, loss)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), response_mask),
            "dual_clipfrac": masked_mean(dual_clipped.float(), response_mask),
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
            # ratios are > 0, so a 0 on padding never wins; no boolean indexing (a device sync)
            "ratio_max": torch.where(response_mask.bool(), ratio, torch.zeros_like(ratio)).max(),
        }
    return aggregate(loss, response_mask, agg, **agg_kwargs), stats


def gspo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    response_mask: Tensor,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg: str = "seq-mean-token-mean",
    **agg_kwargs,
) -> tuple[Tensor, Stats]:
    """GSPO (Zheng et al. 2025, eq. 7 and its token-level form GSPO-token, eq. 13-14).

    Sequence ratio `s_i = exp(mean_t (logp - old_logp))`, the geometric mean of the token ratios,
    clipped per sequence. The token-level form `s_{i,t} = sg[s_i] * pi_t / sg[pi_t]` has the value
    `s_i` on every token but its gradient flows through each token's own log-prob, so per-token
    advantages are allowed. Defaults follow the paper: clip range (3e-4, 4e-4) and the per-sequence
    token mean. Stats: `clipfrac` (token fraction), `seq_ratio_mean`, `approx_kl`.
    """
    mask = response_mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    seq_log_ratio = masked_sum(log_ratio, mask, dim=-1) / mask.sum(-1).clamp_min(1)  # (B,)
    token_log_ratio = seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach()  # (B, T)
    ratio = torch.exp(token_log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(loss_unclipped, loss_clipped)
    with torch.no_grad():
        valid_seqs = mask.sum(-1) > 0
        seq_ratio = torch.exp(seq_log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO))
        lr = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        stats = {
            "clipfrac": masked_mean((loss_clipped > loss_unclipped).float(), response_mask),
            "seq_ratio_mean": masked_mean(seq_ratio, valid_seqs),
            "approx_kl": masked_mean(torch.expm1(lr) - lr, response_mask),
        }
    return aggregate(loss, response_mask, agg, **agg_kwargs), stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    response_mask: Tensor,
    clip: float | None = 0.2,
    agg: str = "token-mean",
    **agg_kwargs,
) -> tuple[Tensor, Stats]:
    """Clipped value loss (PPO as in OpenAI baselines): `0.5 * max((V - R)^2, (V_clip - R)^2)`.

    `V_clip = old_V + clip(V - old_V, -clip, clip)`; `clip=None` gives the plain `0.5 (V - R)^2`.
    Inputs `(B, T)`. Stats: `clipfrac` (tokens where the clipped error was larger), `value_mean`.
    """
    err = (values - returns) ** 2
    if clip is None:
        loss, clipped = 0.5 * err, torch.zeros_like(err, dtype=torch.bool)
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        err_clip = (v_clip - returns) ** 2
        loss, clipped = 0.5 * torch.maximum(err, err_clip), err_clip > err
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(clipped.float(), response_mask),
            "value_mean": masked_mean(values, response_mask),
        }
    return aggregate(loss, response_mask, agg, **agg_kwargs), stats


def kl_loss(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    response_mask: Tensor,
    kind: str = "k3",
    agg: str = "token-mean",
    **agg_kwargs,
) -> tuple[Tensor, Stats]:
    """KL to the reference as a loss term (GRPO, eq. 3-4, with the k3 estimator by default).

    Add `coef * loss` to the policy loss. Stats: `kl` (the aggregated value, detached).
    """
    loss = aggregate(kl_penalty(logprobs, ref_logprobs, kind), response_mask, agg, **agg_kwargs)
    return loss, {"kl": loss.detach()}


def entropy_loss(
    entropy: Tensor, response_mask: Tensor, agg: str = "token-mean", **agg_kwargs
) -> tuple[Tensor, Stats]:
    """Entropy bonus as a loss to MINIMISE: `-aggregate(entropy)`; add `coef * loss` to the policy loss.

    entropy `(B, T)` from `entropy_from_logits`. Stats: `entropy` (the aggregated entropy, detached).
    """
    ent = aggregate(entropy, response_mask, agg, **agg_kwargs)
    return -ent, {"entropy": ent.detach()}


__all__ = [
    "AGG_MODES", "KL_KINDS", "masked_sum", "masked_mean", "masked_var", "masked_whiten",
    "logprobs_from_logits", "entropy_from_logits", "loss_normaliser", "normaliser_count", "aggregate",
    "gae", "discounted_returns", "reinforce_pp_advantages", "grpo_advantages", "rloo_advantages",
    "remax_advantages", "safe_rlhf_advantages", "lagrange_update", "overlong_penalty",
    "groups_with_variance", "kl_penalty", "kl_reward", "kl_penalized_scores", "FixedKLController", "AdaptiveKLController",
    "ppo_policy_loss", "gspo_policy_loss", "value_loss", "kl_loss", "entropy_loss",
]
