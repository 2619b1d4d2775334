"""Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", §3.1): GRPO without its biases.

Two changes to GRPO, nothing else: advantages are NOT divided by the group std
(question-difficulty bias), and the loss sums tokens and divides by a constant
(the max response length) instead of each sequence's length (length bias).
"""

from __future__ import annotations


from rlkit.algos.grpo import GRPO
from rlkit.algos.losses import PolicyLoss


def DrGRPO(cfg) -> GRPO:
    algo = GRPO(cfg, norm_by_std=False, name="dr_grpo")
    algo.actor_loss = PolicyLoss.from_config(cfg, agg="seq-mean-token-sum-norm")
    return algo


ALGORITHM = DrGRPO
