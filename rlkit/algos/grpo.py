"""GRPO (Shao et al. 2024, DeepSeekMath §4.1): group-relative advantages, no critic.

Each prompt is sampled `rollout.n` times; a sample's advantage is its score minus
the group mean, divided by the group std (eq. 3 with outcome supervision), on every
response token. KL to the reference is a loss term (k3 estimator), weighted by
`algo.kl_coef`; with `kl_coef = 0` no reference model is built.

Departure from the paper: one update per batch by default (`actor.ppo_epochs`),
and the loss aggregation is configurable (`algo.loss_agg`, paper: seq-mean-token-mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.algos import core
from rlkit.algos.losses import PolicyLoss


@dataclass
class GRPO:
    cfg: object
    norm_by_std: bool | None = None
    """Divide by the group std (None: `algo.norm_adv_by_std`). False is Dr.GRPO's estimator."""
    name: str = "grpo"
    uses_critic: bool = False
    uses_reference: bool = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        self.uses_reference = self.cfg.algo.kl_coef > 0
        self.actor_loss = PolicyLoss.from_config(self.cfg)
        if self.norm_by_std is None:
            self.norm_by_std = self.cfg.algo.norm_adv_by_std

    def prepare(self, s, batch):
        batch = s.score(batch)
        batch = s.compute_old_logprobs(batch)
        if self.uses_reference:
            batch = s.compute_ref_logprobs(batch)
        adv = core.grpo_advantages(batch.scores, batch.group_id, batch.response_mask, norm_by_std=self.norm_by_std)
        return batch.replace(advantages=adv)


ALGORITHM = GRPO
