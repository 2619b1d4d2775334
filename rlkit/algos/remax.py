"""ReMax (Li et al. 2023, "ReMax: A Simple, Effective, and Efficient RL Method", Alg. 1).

REINFORCE whose baseline is the score of the GREEDY response to the same prompt:
one extra (greedy) generation per prompt replaces the critic. This is HybridFlow's
example of an algorithm that differs from PPO by a few lines: +1 generate, -critic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.algos import core, rollout_correction
from rlkit.algos.base import AlgorithmSpec, kl_spec
from rlkit.algos.losses import PolicyLoss
from rlkit.algos.shaping import advantage_scores, policy_learn_fields


@dataclass
class ReMax:
    cfg: object
    name: str = "remax"
    spec: AlgorithmSpec = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        kl = kl_spec(self.cfg)
        learn = policy_learn_fields(kl["kl_in"], *rollout_correction.learn_fields(self.cfg))
        self.spec = AlgorithmSpec(greedy_baseline=True, **kl, learn_fields=learn)
        self.actor_loss = PolicyLoss.from_config(self.cfg)

    def generate(self, s, prompts):
        batch = s.rollout(prompts)
        greedy = s.score(s.rollout(prompts, greedy=True))  # one row per prompt
        baseline = torch.zeros(len(prompts), dtype=greedy.scores.dtype)
        baseline[greedy.group_id] = greedy.scores  # (P,): greedy score of prompt p
        return batch.replace(baseline_scores=baseline[batch.group_id])

    def prepare(self, s, batch):
        batch = s.compute(batch, *self.spec.prepare_fields)
        # Under kl_in_reward the sampled response pays its KL; the greedy baseline's score is kept as is.
        scores = advantage_scores(batch, self.spec, self.cfg.algo)  # (B,)
        adv = core.remax_advantages(scores, batch.baseline_scores, batch.policy_mask())
        return batch.replace(advantages=adv)


ALGORITHM = ReMax
