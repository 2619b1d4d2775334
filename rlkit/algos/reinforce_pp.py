"""REINFORCE++ (Hu 2025, "REINFORCE++: a simple and efficient approach", §3).

No critic and no groups: the reward is the score on the last token minus a per-token
KL penalty (k1, `algo.kl_coef`); the advantage is the discounted return-to-go,
whitened over all valid tokens of the batch (global batch normalisation). The
update is PPO's clipped surrogate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.algos import core, rollout_correction
from rlkit.algos.shaping import token_level_rewards
from rlkit.algos.base import AlgorithmSpec, kl_spec
from rlkit.algos.losses import PolicyLoss


@dataclass
class ReinforcePP:
    cfg: object
    name: str = "reinforce_pp"
    spec: AlgorithmSpec = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        # The KL always goes to the token rewards here (algo.kl_in_reward changes nothing).
        learn = ("advantages", "old_logprobs", *rollout_correction.learn_fields(self.cfg))
        self.spec = AlgorithmSpec(**kl_spec(self.cfg, default_in="reward"), learn_fields=learn)
        self.actor_loss = PolicyLoss.from_config(self.cfg, kl_coef=0.0)  # KL lives in the reward

    def prepare(self, s, batch):
        batch = s.compute(batch, *self.spec.prepare_fields)  # old log-probs always: the KL penalty reads them
        kl = None
        if self.spec.needs_reference:
            kl = core.kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k1")
        rewards = token_level_rewards(batch, kl, self.cfg.algo.kl_coef)  # (B, T)
        adv, ret = core.reinforce_pp_advantages(rewards, batch.policy_mask(), gamma=self.cfg.algo.gamma)
        return batch.replace(token_rewards=rewards, advantages=adv, returns=ret)


ALGORITHM = ReinforcePP
