"""RLOO (Ahmadian et al. 2024, "Back to Basics", eq. 6): REINFORCE with a leave-one-out baseline.

A sample's advantage is its score minus the mean score of the OTHER samples of its
prompt; no critic, no std normalisation. The update is the clipped surrogate (a
PPO-style trust region, as in the paper's experiments with one epoch it reduces
to REINFORCE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.algos import core, rollout_correction
from rlkit.algos.base import AlgorithmSpec, kl_spec
from rlkit.algos.losses import PolicyLoss
from rlkit.algos.shaping import advantage_scores, policy_learn_fields


@dataclass
class RLOO:
    cfg: object
    name: str = "rloo"
    spec: AlgorithmSpec = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        kl = kl_spec(self.cfg)
        learn = policy_learn_fields(kl["kl_in"], *rollout_correction.learn_fields(self.cfg))
        self.spec = AlgorithmSpec(group_relative=True, learn_fields=learn, **kl)
        self.actor_loss = PolicyLoss.from_config(self.cfg)

    def prepare(self, s, batch):
        batch = s.compute(batch, *self.spec.prepare_fields)
        scores = advantage_scores(batch, self.spec, self.cfg.algo)  # (B,), KL-penalised under kl_in_reward
        return batch.replace(advantages=core.rloo_advantages(scores, batch.group_id, batch.policy_mask()))


ALGORITHM = RLOO
