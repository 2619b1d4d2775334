"""GRPO (Shao et al. 2024, DeepSeekMath §4.1): group-relative advantages, no critic.

Each prompt is sampled `rollout.n` times; a sample's advantage is its score minus
the group mean, divided by the group std (eq. 3 with outcome supervision), on every
response token. KL to the reference is a loss term (`algo.kl_kind`, k3 by default), weighted by
`algo.kl_coef`, or with `algo.kl_in_reward` a penalty subtracted from each sample's score before the
group normalisation; with `kl_coef = 0` no reference model is built.

Departure from the paper: one update per batch by default (`actor.ppo_epochs`),
and the loss aggregation is configurable (`algo.loss_agg`, paper: seq-mean-token-mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.algos import core, rollout_correction
from rlkit.algos.base import AlgorithmSpec, kl_spec
from rlkit.algos.losses import PolicyLoss
from rlkit.algos.shaping import advantage_scores, policy_learn_fields


@dataclass
class GRPO:
    cfg: object
    norm_by_std: bool | None = None
    """Divide by the group std (None: `algo.norm_adv_by_std`). False is Dr.GRPO's estimator."""
    name: str = "grpo"
    spec: AlgorithmSpec = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        kl = kl_spec(self.cfg)
        learn = policy_learn_fields(kl["kl_in"], *rollout_correction.learn_fields(self.cfg))
        self.spec = AlgorithmSpec(group_relative=True, learn_fields=learn, **kl)
        self.actor_loss = PolicyLoss.from_config(self.cfg)
        if self.norm_by_std is None:
            self.norm_by_std = self.cfg.algo.norm_adv_by_std

    def prepare(self, s, batch):
        batch = s.compute(batch, *self.spec.prepare_fields)
        scores = advantage_scores(batch, self.spec, self.cfg.algo)  # (B,), KL-penalised under kl_in_reward
        adv = core.grpo_advantages(scores, batch.group_id, batch.policy_mask(), norm_by_std=self.norm_by_std)
        return batch.replace(advantages=adv)


ALGORITHM = GRPO
