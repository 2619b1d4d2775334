"""ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient RL Method", Alg. 1).

REINFORCE whose baseline is the score of the GREEDY response to the same prompt:
one extra (greedy) generation per prompt replaces the critic. This is HybridFlow's
example of an algorithm that differs from PPO by a few lines: +1 generate, -critic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.algos import core
from rlkit.algos.losses import PolicyLoss


@dataclass
class ReMax:
    cfg: object
    name: str = "remax"
    uses_critic: bool = False
    uses_reference: bool = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        self.uses_reference = self.cfg.algo.kl_coef > 0
        self.actor_loss = PolicyLoss.from_config(self.cfg)

    def generate(self, s, prompts):
        batch = s.rollout(prompts)
        greedy = s.score(s.rollout(prompts, greedy=True))  # one row per prompt
        baseline = torch.zeros(len(prompts), dtype=greedy.scores.dtype)
        baseline[greedy.group_id] = greedy.scores  # (P,): greedy score of prompt p
        return batch.replace(baseline_scores=baseline[batch.group_id])

    def prepare(self, s, batch):
        batch = s.score(batch)
        batch = s.compute_old_logprobs(batch)
        if self.uses_reference:
            batch = s.compute_ref_logprobs(batch)
        adv = core.remax_advantages(batch.scores, batch.baseline_scores, batch.response_mask)
        return batch.replace(advantages=adv)


ALGORITHM = ReMax
