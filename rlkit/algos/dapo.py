"""DAPO (Yu et al. 2025, "DAPO: an open-source LLM RL system at scale", Alg. 1).

GRPO plus four changes: clip-higher (`clip_high` 0.28 > `clip_low` 0.2, keeps
exploration alive), dynamic sampling (groups whose samples all score the same
carry no gradient: drop them and sample more prompts until the batch is full),
token-level loss (token-mean over the whole batch), and overlong reward shaping
(a linear penalty over the last `algo.overlong_buffer` tokens before the length
limit). DAPO drops the KL term; `algo.kl_coef` still adds one if set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.algos import core, rollout_correction
from rlkit.algos.base import AlgorithmSpec, kl_spec
from rlkit.algos.losses import PolicyLoss
from rlkit.algos.shaping import advantage_scores, policy_learn_fields
from rlkit.batch import Batch


@dataclass
class DAPO:
    cfg: object
    clip_high: float = 0.28
    max_rounds: int = 4
    """Dynamic sampling gives up after this many extra rollouts and trains on what it has."""
    name: str = "dapo"
    spec: AlgorithmSpec = field(init=False)
    actor_loss: PolicyLoss = field(init=False)

    def __post_init__(self):
        kl = kl_spec(self.cfg)
        learn = policy_learn_fields(kl["kl_in"], *rollout_correction.learn_fields(self.cfg))
        self.spec = AlgorithmSpec(group_relative=True, learn_fields=learn, **kl)
        self.actor_loss = PolicyLoss.from_config(self.cfg, clip_high=self.clip_high, agg="token-mean")

    def generate(self, s, prompts):
        batch = s.score(s.rollout(prompts))
        if not self.cfg.algo.dynamic_sampling:
            return batch
        wanted = len(prompts)
        kept = self._informative(batch)
        for _ in range(self.max_rounds):
            if _num_groups(kept) >= wanted:
                break
            more = self._informative(s.score(s.rollout(s.next_prompts())))
            more = more.replace(group_id=more.group_id + int(kept.group_id.max()) + 1 if len(kept) else more.group_id)
            kept = Batch.concat([kept, more]) if len(kept) else more
        return _first_groups(kept, wanted) if _num_groups(kept) >= wanted else kept

    @staticmethod
    def _informative(batch):
        return batch.select(torch.nonzero(core.groups_with_variance(batch.scores, batch.group_id)).flatten())

    def prepare(self, s, batch):
        # generate() scored the batch already (dynamic sampling reads the scores); a batch from elsewhere is not
        fields = [f for f in self.spec.prepare_fields if f != "scores" or batch.scores is None]
        batch = s.compute(batch, *fields)
        if self.cfg.algo.overlong_buffer:
            lengths = batch.policy_mask().sum(-1)
            penalty = core.overlong_penalty(
                lengths, self.cfg.rollout.max_new_tokens, self.cfg.algo.overlong_buffer, self.cfg.algo.overlong_penalty
            )
            batch = batch.replace(scores=batch.scores + penalty.to(batch.scores.dtype))
        scores = advantage_scores(batch, self.spec, self.cfg.algo)  # (B,), KL-penalised under kl_in_reward
        adv = core.grpo_advantages(scores, batch.group_id, batch.policy_mask())
        return batch.replace(advantages=adv)


def _num_groups(batch) -> int:
    return 0 if len(batch) == 0 else int(torch.unique(batch.group_id).numel())


def _first_groups(batch, count: int):
    keep = torch.unique(batch.group_id)[:count]
    return batch.select(torch.nonzero(torch.isin(batch.group_id, keep)).flatten())


ALGORITHM = DAPO
