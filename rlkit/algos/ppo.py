"""PPO for language models (Ouyang et al. 2022 / Ziegler et al. 2019; HybridFlow Fig. 5's 8 lines).

A critic estimates per-token values; the reward is the sequence score on the last
response token minus `kl_coef * KL(pi_old || pi_ref)` on every token (k1, as a
reward penalty, with a fixed or adaptive coefficient: `algo.kl_target`); GAE
(Schulman et al. 2016) gives advantages (whitened over the batch) and returns,
which the critic regresses to with a clipped value loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.algos import core, rollout_correction
from rlkit.algos.shaping import token_level_rewards
from rlkit.algos.base import AlgorithmSpec, kl_spec
from rlkit.algos.losses import PolicyLoss


@dataclass
class PPO:
    cfg: object
    name: str = "ppo"
    spec: AlgorithmSpec = field(init=False)
    actor_loss: PolicyLoss = field(init=False)
    kl_ctl: object = field(init=False)

    def __post_init__(self):
        algo = self.cfg.algo
        # The KL always goes to the token rewards here (algo.kl_in_reward changes nothing).
        self.spec = AlgorithmSpec(needs_critic=True, **kl_spec(self.cfg, default_in="reward"),
                                  learn_fields=("advantages", "old_logprobs", "values", "returns",
                                                *rollout_correction.learn_fields(self.cfg)))
        self.actor_loss = PolicyLoss.from_config(self.cfg, kl_coef=0.0)  # KL lives in the reward
        if algo.kl_target is None:
            self.kl_ctl = core.FixedKLController(algo.kl_coef)
        else:
            self.kl_ctl = core.AdaptiveKLController(algo.kl_coef, algo.kl_target, horizon=10_000)

    def prepare(self, s, batch):
        batch = s.compute(batch, *self.spec.prepare_fields)  # old log-probs always: the KL penalty reads them
        kl = None
        if self.spec.needs_reference:
            kl = core.kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k1")  # (B, T)
        rewards = token_level_rewards(batch, kl, self.kl_ctl.value)  # (B, T)
        adv, ret = core.gae(rewards, batch.values, batch.policy_mask(), self.cfg.algo.gamma, self.cfg.algo.lam)
        adv = core.masked_whiten(adv, batch.policy_mask())
        return batch.replace(token_rewards=rewards, advantages=adv, returns=ret)

    def after_learn(self, s, batch, stats):
        if batch.ref_logprobs is None:
            return {}
        kl = core.masked_mean(core.kl_penalty(batch.old_logprobs, batch.ref_logprobs, "k1"), batch.policy_mask())
        self.kl_ctl.update(float(kl), len(batch))
        return {"actor/kl_coef": self.kl_ctl.value}

    def state_dict(self) -> dict:
        """What a run checkpoint keeps: the (adaptive) KL coefficient."""
        return {"kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])


ALGORITHM = PPO
