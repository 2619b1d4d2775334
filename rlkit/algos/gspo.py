"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", eq. 5-7).

GRPO's group advantages with a SEQUENCE-level importance ratio: the geometric mean
of the token ratios, clipped per sequence. The clip range is of the ratio's
log-scale size, so the paper's values (3e-4 / 4e-4) are this algorithm's
defaults, not `algo.clip_low/high` (pass `GSPO(cfg, clip_low=..., clip_high=...)`
to a Session to change them).
"""

from __future__ import annotations

from rlkit.algos.grpo import GRPO
from rlkit.algos.losses import PolicyLoss


def GSPO(cfg, clip_low: float = 3e-4, clip_high: float = 4e-4) -> GRPO:
    algo = GRPO(cfg, name="gspo")
    algo.actor_loss = PolicyLoss.from_config(
        cfg, surrogate="gspo", clip_low=clip_low, clip_high=clip_high, agg="seq-mean-token-mean", dual_clip=None
    )
    return algo


ALGORITHM = GSPO
