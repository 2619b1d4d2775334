"""Rollout correction: the policy that sampled the batch is not quite the one the trainer computes.

The rollout engine samples response tokens from pi_rollout and records log pi_rollout(token)
(`Batch.rollout_logprobs`); before the update the trainer recomputes log pi_old(token)
(`Batch.old_logprobs`, the proximal policy the PPO ratio pi_theta / pi_old is anchored to). The two
differ: another kernel or precision (vLLM or bf16: ~0.03 nats per token; the hf engine in fp32
agrees to ~1e-5), or samples from older weights. The surrogate assumes the tokens were drawn from
pi_old; they were drawn from pi_rollout. Two corrections, as options of every algorithm's policy loss
(`algo.*`, `PolicyLoss.correction`), both computed from the per-token log ratio
`log_ratio_t = log pi_old(y_t) - log pi_rollout(y_t)`:

- Truncated importance sampling (`algo.rollout_is`, TIS: Yao et al. 2025, "Your efficient RL framework
  secretly brings you off-policy RL training"). "token": `w_t = min(exp(log_ratio_t), cap)`;
  "sequence": `w = min(exp(sum_t log_ratio_t), cap)` on every token of the sequence (unbiased for
  sequence-level rewards, but the product of a long sequence's ratios has a high variance). The cap
  (`algo.rollout_is_cap`) trades that variance for a bias.
- Band masking (`algo.rollout_mask`, rejection of the samples the two policies disagree on): weight 0
  where the ratio leaves `[rollout_mask_low, rollout_mask_high]`, per "token", per "sequence" (the
  product of its token ratios) or "geometric" (the geometric mean of its token ratios: comparable
  between short and long sequences).

Both together multiply: `weight = w * keep` (B, T), detached and >= 0.

Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization", arXiv 2110.00641)
separates the behaviour policy (which sampled: pi_rollout) from the proximal policy (which the clip is
anchored to: pi_old):
    L = E_{y ~ pi_rollout}[ pi_old / pi_rollout * max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)) ],
    r = pi_theta / pi_old.
That is `rollout_is = "token"` exactly (with the cap: its truncated form), so stale samples need no
other option. Under `actor.skip_old_logprobs` (one optimizer step per batch) the loss takes pi_old as
the current policy, detached: at that single step it IS the proximal policy, so the correction stays
exact without recomputed old log-probs.

How the weight enters the loss: for a detached w >= 0,
`w * max(-A r, -A clip(r)) = max(-(w A) r, -(w A) clip(r))` (the dual-clip bound `-A c` scales the same
way, and the GSPO surrogate has the same form), so `PolicyLoss` multiplies the advantages by the weight
before the surrogate, whose code stays as it is. The KL and entropy terms are not weighted (regularisers
of the current policy, not estimates under the sampling distribution; verl does the same), nor is PPO's
value loss. Tokens given weight 0 never count in `clipfrac` (their clipped and unclipped losses are both 0).

Aggregation: masked tokens still count in the loss normaliser (as in verl). The worker fixes the
normaliser (global valid tokens or sequences) from `response_mask` before any loss is computed, and
keeping it means masking never scales up the tokens that survive: a batch where half the tokens leave
the band takes half a step, not a full step on half the evidence.

Metrics (`mismatch_metrics`, verl's names), over valid tokens, whenever the batch has both log-probs
(with or without a correction; absent under `actor.skip_old_logprobs`, which computes no old_logprobs):
`rollout_corr/kl` (k3 estimate of KL(pi_rollout || pi_old) from the rollout's samples), `rollout_corr/kl_k1`,
`rollout_corr/ratio_mean`, `rollout_corr/ratio_max` (token ratio pi_old / pi_rollout),
`training/rollout_probs_diff_mean` and `_max` (|pi_old(y_t) - pi_rollout(y_t)|), and with a correction on
`rollout_corr/is_weight_mean` and `rollout_corr/masked_frac` (fraction of valid tokens the band removes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rlkit.algos import core

IS_LEVELS = ("token", "sequence")
"""Values of `algo.rollout_is` besides None."""
MASK_LEVELS = ("token", "sequence", "geometric")
"""Values of `algo.rollout_mask` besides None."""

_MAX_LOG_RATIO = core._MAX_LOG_RATIO  # exp() of a clamped log ratio never overflows


def rollout_log_ratio(old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """`log pi_old - log pi_rollout` per token, clamped to +-20, 0 on padding. (B, T) x3 -> (B, T) float32."""
    log_ratio = (old_logprobs.float() - rollout_logprobs.float()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    return torch.where(response_mask.bool(), log_ratio, torch.zeros((), device=log_ratio.device))


def sequence_log_ratio(log_ratio: Tensor, response_mask: Tensor, level: str) -> Tensor:
    """One log ratio per row from the token ones (B, T) -> (B,): "sequence" sums them (the log of the
    product of the token ratios), "geometric" averages them over the row's valid tokens."""
    total = core.masked_sum(log_ratio, response_mask, dim=-1)  # (B,)
    if level == "sequence":
        return total
    if level == "geometric":
        return total / response_mask.to(log_ratio.dtype).sum(-1).clamp_min(1)
    raise ValueError(f"sequence_log_ratio: level={level!r}; allowed 'sequence', 'geometric'")


def _per_token(log_ratio: Tensor, response_mask: Tensor, level: str) -> Tensor:
    """(B, T) the log ratio each token is judged by: its own ("token") or its row's, broadcast."""
    if level == "token":
        return log_ratio
    return sequence_log_ratio(log_ratio, response_mask, level)[:, None].expand_as(log_ratio)


@torch.no_grad()
def truncated_is_weights(log_ratio: Tensor, response_mask: Tensor, level: str, cap: float) -> Tensor:
    """Truncated importance weights `min(pi_old / pi_rollout, cap)`, detached. (B, T) -> (B, T), 0 on padding.

    level "token": each token's own ratio; "sequence": the product of the row's token ratios, on every
    token of the row. Taken as `exp(min(log ratio, log cap))`, so a long row's product never overflows.
    """
    if cap <= 0:
        raise ValueError(f"truncated_is_weights: cap={cap} must be > 0 (algo.rollout_is_cap)")
    if level not in IS_LEVELS:
        raise ValueError(f"truncated_is_weights: level={level!r}; allowed {', '.join(IS_LEVELS)} (algo.rollout_is)")
    per_token = _per_token(log_ratio, response_mask, level).clamp(max=math.log(cap))
    return torch.where(response_mask.bool(), torch.exp(per_token), torch.zeros((), device=log_ratio.device))


@torch.no_grad()
def band_keep_mask(log_ratio: Tensor, response_mask: Tensor, level: str, low: float, high: float) -> Tensor:
    """1.0 where the ratio pi_old / pi_rollout lies in `[low, high]`, 0.0 where it leaves the band or on
    padding. (B, T) -> (B, T) float. level "token", "sequence" (row product) or "geometric" (row geometric
    mean); a row-level ratio keeps or drops the whole row. Compared in log space (no overflow)."""
    if level not in MASK_LEVELS:
        raise ValueError(f"band_keep_mask: level={level!r}; allowed {', '.join(MASK_LEVELS)} (algo.rollout_mask)")
    if not 0 <= low <= high:
        raise ValueError(f"band_keep_mask: need 0 <= low <= high, got low={low}, high={high}")
    per_token = _per_token(log_ratio, response_mask, level)
    log_low = math.log(low) if low > 0 else -math.inf
    inside = (per_token >= log_low) & (per_token <= math.log(high))
    return (inside & response_mask.bool()).to(log_ratio.dtype)


@torch.no_grad()
def mismatch_metrics(old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor) -> dict[str, Tensor]:
    """How far the trainer's pi_old is from the rollout's pi_rollout on the sampled tokens (B, T) x3, as
    0-d tensors over the valid tokens (names: see the module docstring). The samples come from pi_rollout,
    so the KL estimated is KL(pi_rollout || pi_old): `core.kl_penalty(rollout, old)` (k3 >= 0; k1 unbiased)."""
    mask = response_mask.bool()
    old, rollout = old_logprobs.float(), rollout_logprobs.float()
    ratio = torch.exp(rollout_log_ratio(old, rollout, mask))  # (B, T), 1 on padding
    zero = torch.zeros((), device=ratio.device)
    probs_diff = (torch.exp(old) - torch.exp(rollout)).abs()  # (B, T)
    return {
        "rollout_corr/kl": core.masked_mean(core.kl_penalty(rollout, old, "k3"), mask),
        "rollout_corr/kl_k1": core.masked_mean(core.kl_penalty(rollout, old, "k1"), mask),
        "rollout_corr/ratio_mean": core.masked_mean(ratio, mask),
        # ratios and differences are >= 0, so a 0 on padding never wins the max
        "rollout_corr/ratio_max": torch.where(mask, ratio, zero).max(),
        "training/rollout_probs_diff_mean": core.masked_mean(probs_diff, mask),
        "training/rollout_probs_diff_max": torch.where(mask, probs_diff, zero).max(),
    }


@dataclass(frozen=True)
class RolloutCorrection:
    """The configured correction (`algo.rollout_is*`, `algo.rollout_mask*`): picklable, travels with the loss."""

    is_level: str | None = None
    """Importance weights per "token" or "sequence"; None: none (weight 1)."""
    is_cap: float = 2.0
    """Truncation of the importance weights."""
    mask_level: str | None = None
    """Band masking per "token", "sequence" or "geometric"; None: nothing masked."""
    mask_low: float = 0.5
    """Lower edge of the kept band of pi_old / pi_rollout."""
    mask_high: float = 2.0
    """Upper edge of the kept band."""

    def loss_weights(self, old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor) -> Tensor:
        """(B, T) detached weights >= 0 of the per-token policy loss: importance weight times keep mask."""
        log_ratio = rollout_log_ratio(old_logprobs.detach(), rollout_logprobs, response_mask)
        weights = response_mask.to(log_ratio.dtype)
        if self.is_level is not None:
            weights = truncated_is_weights(log_ratio, response_mask, self.is_level, self.is_cap)
        if self.mask_level is not None:
            weights = weights * band_keep_mask(log_ratio, response_mask, self.mask_level, self.mask_low,
                                               self.mask_high)
        return weights

    def weight_stats(self, weights: Tensor, response_mask: Tensor) -> dict[str, Tensor]:
        """`is_weight_mean` (mean weight of the valid tokens) and, with band masking, `masked_frac` (share of
        the valid tokens given weight 0). 0-d tensors; token means, so micro-batch shares average exactly."""
        out = {"is_weight_mean": core.masked_mean(weights, response_mask)}
        if self.mask_level is not None:
            out["masked_frac"] = core.masked_mean((weights == 0).float(), response_mask)
        return out

    @classmethod
    def from_config(cls, algo_cfg: Any) -> "RolloutCorrection | None":
        """The correction `algo_cfg` (an `AlgoConfig`) asks for; None when both options are off."""
        if algo_cfg.rollout_is is None and algo_cfg.rollout_mask is None:
            return None
        return cls(is_level=algo_cfg.rollout_is, is_cap=algo_cfg.rollout_is_cap, mask_level=algo_cfg.rollout_mask,
                   mask_low=algo_cfg.rollout_mask_low, mask_high=algo_cfg.rollout_mask_high)


def learn_fields(cfg: Any) -> tuple[str, ...]:
    """The Batch fields the correction adds to an algorithm's `spec.learn_fields`: `rollout_logprobs` when on."""
    return ("rollout_logprobs",) if RolloutCorrection.from_config(cfg.algo) is not None else ()


def batch_metrics(batch: Any, correction: RolloutCorrection | None = None) -> dict[str, float]:
    """The step's mismatch metrics on the driver (the monitor's prepare stats report them): `mismatch_metrics`
    over the whole prepared batch, plus `rollout_corr/is_weight_mean` / `masked_frac` when `correction` is on.
    Empty when the batch lacks `rollout_logprobs` or `old_logprobs` (`actor.skip_old_logprobs`)."""
    if batch.rollout_logprobs is None or batch.old_logprobs is None:
        return {}
    out = mismatch_metrics(batch.old_logprobs, batch.rollout_logprobs, batch.policy_mask())
    if correction is not None:
        weights = correction.loss_weights(batch.old_logprobs, batch.rollout_logprobs, batch.policy_mask())
        out.update({f"rollout_corr/{k}": v for k, v in correction.weight_stats(weights, batch.policy_mask()).items()})
    return {key: float(value) for key, value in out.items()}


def correction_problems(algo: Any, cfg: Any, name: str) -> list[str]:
    """`Config.validate()`'s check (via `rlkit.algos.base.config_problems`): an algorithm whose actor loss does
    not apply the configured correction (it is not built by `PolicyLoss.from_config(cfg)`) is an error that
    names the option, rather than a setting silently ignored."""
    wanted = RolloutCorrection.from_config(cfg.algo)
    loss = getattr(algo, "actor_loss", None)
    if wanted is None or getattr(loss, "correction", None) == wanted:
        return []
    key = "rollout_is" if cfg.algo.rollout_is is not None else "rollout_mask"
    return [f"algo.{key} = {getattr(cfg.algo, key)!r}: the actor loss of algo.name = {name!r} "
            f"({type(loss).__name__}) does not apply the rollout correction; build it with "
            "rlkit.algos.losses.PolicyLoss.from_config(cfg)"]


__all__ = ["IS_LEVELS", "MASK_LEVELS", "rollout_log_ratio", "sequence_log_ratio", "truncated_is_weights",
           "band_keep_mask", "mismatch_metrics", "RolloutCorrection", "learn_fields", "batch_metrics",
           "correction_problems"]
