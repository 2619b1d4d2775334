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

from rlkit.algos import core, rollout_correction
from rlkit.algos.base import AlgorithmSpec, kl_spec
from rlkit.algos.losses import PolicyLoss
from rlkit.algos.shaping import advantage_scores, policy_learn_fields


@dataclass
class SafeRLHF:
    cfg: object
    name: str = "safe_rlhf"
    spec: AlgorithmSpec = field(init=False)
    actor_loss: PolicyLoss = field(init=False)
    lagrange: float = field(init=False)

    def __post_init__(self):
        kl = kl_spec(self.cfg)
        learn = policy_learn_fields(kl["kl_in"], *rollout_correction.learn_fields(self.cfg))
        self.spec = AlgorithmSpec(group_relative=True, needs_costs=True, **kl, learn_fields=learn)
        self.actor_loss = PolicyLoss.from_config(self.cfg)
        self.lagrange = self.cfg.algo.lagrange_init

    def prepare(self, s, batch):
        batch = s.compute(batch, *self.spec.prepare_fields)  # scores and costs, log-probs
        if batch.costs is None:
            raise ValueError("safe_rlhf needs costs: set data.source to a task with a cost rule or model.cost_model_path")
        norm = self.cfg.algo.norm_adv_by_std
        scores = advantage_scores(batch, self.spec, self.cfg.algo)  # (B,): the KL penalty is on the reward only
        adv_r = core.grpo_advantages(scores, batch.group_id, batch.policy_mask(), norm_by_std=norm)
        adv_c = core.grpo_advantages(batch.costs, batch.group_id, batch.policy_mask(), norm_by_std=norm)
        return batch.replace(advantages=core.safe_rlhf_advantages(adv_r, adv_c, self.lagrange))

    def after_learn(self, s, batch, stats):
        mean_cost = float(batch.costs.float().mean())
        self.lagrange = float(core.lagrange_update(self.lagrange, mean_cost, self.cfg.algo.cost_limit, self.cfg.algo.lagrange_lr))
        return {"safe/lambda": self.lagrange, "safe/cost_violation": mean_cost - self.cfg.algo.cost_limit}

    def state_dict(self) -> dict:
        """What a run checkpoint keeps: the Lagrange multiplier."""
        return {"lagrange": self.lagrange}

    def load_state_dict(self, state: dict) -> None:
        self.lagrange = float(state["lagrange"])


ALGORITHM = SafeRLHF
