"""RLOO (Ahmadian et al. 2024, "Back to Basics", eq. 6): REINFORCE with a leave-one-out baseline.

A sample's advantage is its score minus the mean score of the OTHER samples of its
prompt; no critic, no std normalisation. The update is the clipped surrogate (a
PPO-style trust region, as in the paper's experiments with one epoch it reduces
to REINFORCE).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.algos import core
from rlkit.algos.losses import PolicyLoss


@dataclass
class RLOO:
    cfg: object
    name: str = "rloo"
    uses_critic: bool = False
    uses_reference: bool = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        self.uses_reference = self.cfg.algo.kl_coef > 0
        self.actor_loss = PolicyLoss.from_config(self.cfg)

    def prepare(self, s, batch):
        batch = s.score(batch)
        batch = s.compute_old_logprobs(batch)
        if self.uses_reference:
            batch = s.compute_ref_logprobs(batch)
        return batch.replace(advantages=core.rloo_advantages(batch.scores, batch.group_id, batch.response_mask))


ALGORITHM = RLOO
