"""Safe-RLHF (Dai et al. 2023, "Safe RLHF", eq. 10-12): maximise reward subject to a cost limit.

The Lagrangian `max_pi min_{lambda>=0} E[R] - lambda (E[C] - limit)` is solved by
alternating: the policy follows the combined advantage
`(A_r - lambda A_c) / (1 + lambda)`, and lambda rises while the mean cost exceeds
`algo.cost_limit` and falls (to 0) once it is met (`algo.lagrange_lr`).

Departure from the paper: A_r and A_c are group-relative (GRPO-style, several
samples per prompt) instead of coming from a reward critic and a cost critic with
GAE, so no critic is built; HybridFlow's point stands: +5 lines over the base
algorithm (cost scores, cost advantages, the multiplier update).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlkit.algos import core
from rlkit.algos.losses import PolicyLoss


@dataclass
class SafeRLHF:
    cfg: object
    name: str = "safe_rlhf"
    uses_critic: bool = False
    uses_reference: bool = field(init=False)
    actor_loss: PolicyLoss = field(init=False)
    lagrange: float = field(init=False)

    def __post_init__(self):
        self.uses_reference = self.cfg.algo.kl_coef > 0
        self.actor_loss = PolicyLoss.from_config(self.cfg)
        self.lagrange = self.cfg.algo.lagrange_init

    def prepare(self, s, batch):
        batch = s.score(batch)  # scores and costs
        if batch.costs is None:
            raise ValueError("safe_rlhf needs costs: set data.source to a task with a cost rule or model.cost_model_path")
        batch = s.compute_old_logprobs(batch)
        if self.uses_reference:
            batch = s.compute_ref_logprobs(batch)
        norm = self.cfg.algo.norm_adv_by_std
        adv_r = core.grpo_advantages(batch.scores, batch.group_id, batch.response_mask, norm_by_std=norm)
        adv_c = core.grpo_advantages(batch.costs, batch.group_id, batch.response_mask, norm_by_std=norm)
        return batch.replace(advantages=core.safe_rlhf_advantages(adv_r, adv_c, self.lagrange))

    def after_learn(self, s, batch, stats):
        mean_cost = float(batch.costs.float().mean())
        self.lagrange = float(core.lagrange_update(self.lagrange, mean_cost, self.cfg.algo.cost_limit, self.cfg.algo.lagrange_lr))
        return {"safe/lambda": self.lagrange, "safe/cost_violation": mean_cost - self.cfg.algo.cost_limit}


ALGORITHM = SafeRLHF
