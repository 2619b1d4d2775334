"""The actor loss most algorithms share: a clipped surrogate, plus optional KL and entropy terms.

`PolicyLoss` is a small picklable object (it travels to every worker with each
update call) implementing the worker contract
`loss_fn(outputs, mb, global_tokens, global_seqs) -> (loss, metrics)`: the loss is
this micro-batch's share of the global mini-batch loss (see
`rlkit.algos.core.aggregate`), so results do not depend on ranks or micro-batches.
With `correction` (`algo.rollout_is` / `algo.rollout_mask`) the surrogate's per-token terms are weighted
by pi_old / pi_rollout (truncated, or 0 outside a band): see `rlkit.algos.rollout_correction`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rlkit.algos import core
from rlkit.algos.rollout_correction import RolloutCorrection


@dataclass(frozen=True)
class PolicyLoss:
    surrogate: Literal["ppo", "gspo"] = "ppo"
    """"ppo": token-level ratio (PPO/GRPO/DAPO); "gspo": sequence-level ratio (GSPO)."""
    clip_low: float = 0.2
    """Lower clip: ratio >= 1 - clip_low."""
    clip_high: float = 0.2
    """Upper clip: ratio <= 1 + clip_high (DAPO's clip-higher raises it)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative advantages (None: off)."""
    agg: str = "token-mean"
    """Loss aggregation mode, see `core.aggregate`."""
    norm_length: int | None = None
    """Constant length for "seq-mean-token-sum-norm" (Dr.GRPO): the max response length."""
    kl_coef: float = 0.0
    """Weight of the KL-to-reference loss term (0: off, e.g. when KL is a reward penalty)."""
    kl_kind: str = "k3"
    """KL estimator of the loss term: k1, k2, k3, abs."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus."""
    correction: RolloutCorrection | None = None
    """Rollout correction of the surrogate from `mb.rollout_logprobs` (None: off, the plain surrogate)."""

    def __call__(self, outputs: dict, mb, global_tokens: float, global_seqs: float):
        logprobs, entropy = outputs["logprobs"], outputs["entropy"]  # (b, T) each
        mask = mb.policy_mask().to(logprobs.device)  # (b, T): the policy's own tokens
        # No old_logprobs: one on-policy optimizer step (actor.skip_old_logprobs), old = current, detached.
        old = mb.old_logprobs.to(logprobs.device) if mb.old_logprobs is not None else logprobs.detach()
        adv = mb.advantages.to(logprobs.device)
        if self.correction is not None:
            # (b, T) detached weights >= 0; scaling A scales each token's clipped surrogate by the same factor
            weights = self.correction.loss_weights(old, self._rollout_logprobs(mb, logprobs.device), mask)
            adv = adv * weights
        counts = dict(norm_length=self.norm_length, global_tokens=global_tokens, global_seqs=global_seqs)
        surrogate = core.gspo_policy_loss if self.surrogate == "gspo" else core.ppo_policy_loss
        extra = {} if self.surrogate == "gspo" else {"dual_clip": self.dual_clip}
        loss, stats = surrogate(
            logprobs, old, adv, mask, clip_low=self.clip_low, clip_high=self.clip_high, agg=self.agg, **extra, **counts
        )
        # The worker weights metrics by this micro-batch's token share, so report the
        # local mean of the surrogate (share * global count / local count), not the share.
        unit = core.loss_normaliser(self.agg)
        global_count = global_tokens if unit == "tokens" else global_seqs
        local_count = max(core.normaliser_count(mask, self.agg), 1.0)
        metrics = {"pg_loss": loss.detach() * (global_count / local_count), "clipfrac": stats["clipfrac"]}
        if self.correction is not None:
            metrics.update({f"rollout_{k}": v for k, v in self.correction.weight_stats(weights, mask).items()})
        if mb.ref_logprobs is not None:
            # Reported even when it is not a loss term: it is the quantity everyone watches.
            kl_term, _ = core.kl_loss(logprobs, mb.ref_logprobs.to(logprobs.device), mask, self.kl_kind, agg=self.agg, **counts)
            metrics["kl"] = core.masked_mean(core.kl_penalty(logprobs.detach(), mb.ref_logprobs.to(logprobs.device), self.kl_kind), mask)
            if self.kl_coef:
                loss = loss + self.kl_coef * kl_term
        metrics["entropy"] = core.masked_mean(entropy.detach(), mask)
        if self.entropy_coef:
            ent_term, _ = core.entropy_loss(entropy, mask, agg=self.agg, **counts)
            loss = loss + self.entropy_coef * ent_term
        return loss, metrics

    @staticmethod
    def _rollout_logprobs(mb, device):
        if mb.rollout_logprobs is None:
            raise ValueError("PolicyLoss: algo.rollout_is / algo.rollout_mask need Batch.rollout_logprobs (the rollout "
                             "engine's log-probs), and this micro-batch has none")
        return mb.rollout_logprobs.to(device)

    @classmethod
    def from_config(cls, cfg, **overrides) -> "PolicyLoss":
        """The loss the config describes (`algo` and `actor` sections); `overrides` win."""
        algo = cfg.algo
        fields = dict(
            clip_low=algo.clip_low,
            clip_high=algo.clip_high,
            dual_clip=algo.dual_clip,
            agg=algo.loss_agg,
            norm_length=cfg.rollout.max_new_tokens,
            kl_coef=0.0 if algo.kl_in_reward else algo.kl_coef,
            kl_kind=algo.kl_kind,
            entropy_coef=cfg.actor.entropy_coef,
            correction=RolloutCorrection.from_config(algo),
        )
        fields.update(overrides)
        return cls(**fields)

