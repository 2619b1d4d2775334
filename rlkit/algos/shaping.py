"""Reward shaping the outcome-level algorithms share: the KL penalty moved into the reward.

With `spec.kl_in == "reward"` a GRPO-family algorithm normalises `score - kl_coef * sum_t kl_t`
(per sample, `algo.kl_kind` estimator of KL(pi_old || pi_ref)) instead of the raw score, and its
policy loss has no KL term (`PolicyLoss.from_config` drops it). PPO and REINFORCE++ spread the
penalty over tokens with `core.kl_reward` instead: their estimators are token-level.
"""

from __future__ import annotations

from torch import Tensor

from rlkit.algos import core


def advantage_scores(batch, spec, algo_cfg, scores: Tensor | None = None) -> Tensor:
    """(B,) the scores an outcome-level estimator normalises: `scores` (default `batch.scores`), minus the
    summed per-token KL penalty when the spec puts the KL in the reward (needs old and ref log-probs)."""
    scores = batch.scores if scores is None else scores
    if spec.kl_in != "reward":
        return scores
    kl = core.kl_penalty(batch.old_logprobs, batch.ref_logprobs, algo_cfg.kl_kind)  # (B, T)
    return core.kl_penalized_scores(scores, kl, batch.policy_mask(), algo_cfg.kl_coef)


def token_level_rewards(batch, kl: Tensor | None, coef: float) -> Tensor:
    """(B, T) token rewards of the token-level estimators (PPO, REINFORCE++), minus `coef * kl` on the trained
    tokens. A single-turn batch: the score on its last token (`core.kl_reward`). A multi-turn batch
    (`batch.turn_rewards`, rlkit.envs): each environment step's reward on the last token of the policy turn it
    answered, so the return credits every turn with what came after it."""
    mask = batch.policy_mask()
    if batch.turn_rewards is None:
        return core.kl_reward(batch.scores, mask, kl=kl, coef=coef)
    zero = batch.turn_rewards.new_zeros(len(batch))  # (B,): the KL part alone, then the rewards where they fell
    return core.kl_reward(zero, mask, kl=kl, coef=coef) + batch.turn_rewards * mask.to(batch.turn_rewards.dtype)


def policy_learn_fields(spec_kl_in: str | None, *extra: str) -> tuple[str, ...]:
    """The Batch fields a `PolicyLoss` update reads: advantages, old log-probs, and the reference's when
    the KL is a loss term."""
    return ("advantages", "old_logprobs", *(("ref_logprobs",) if spec_kl_in == "loss" else ()), *extra)
