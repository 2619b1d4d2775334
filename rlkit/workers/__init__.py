"""The multi-controller side: one FSDP2-sharded model component and the roles built from it.

- `ShardedModel` (sharded.py): build from a hub name / folder / config, FSDP2 per decoder
  layer + root, forward, offload, full state dict and Hugging Face export.
- `Optimizer`, `OptimConfig` (optim.py): AdamW, warm-up + cosine/linear schedule, clipping.
- `save_checkpoint` / `load_checkpoint` (checkpoint.py): sharded DCP checkpoints.
- `ModelRole` (role.py): what every model role holds (tokenizer, model, optimizer, residency,
  stats) and does the same way (the no-grad micro-batch loop, the update loop, checkpoints).
- Roles (plain classes for `rlkit.cluster.WorkerGroup`), each holding one `ModelRole`: `PolicyWorker`,
  `ReferenceWorker`, `CriticWorker`, `RewardModelWorker`; and `RuleRewardWorker` (a rule, no model).
- The first two RLHF stages: `run_sft` / `SFTTrainer` (sft.py) and `run_rm` /
  `RewardModelTrainer` (rm_training.py).
- `interleave_minibatches` (batching.py): driver-side row order for rank-independent mini-batches.

Names are imported lazily so `import rlkit.workers` does not pull in transformers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ShardedModel": "rlkit.workers.sharded",
    "TokenScoreModel": "rlkit.workers.sharded",
    "Optimizer": "rlkit.workers.optim",
    "OptimConfig": "rlkit.workers.optim",
    "lr_multiplier": "rlkit.workers.optim",
    "save_checkpoint": "rlkit.workers.checkpoint",
    "load_checkpoint": "rlkit.workers.checkpoint",
    "interleave_minibatches": "rlkit.workers.batching",
    "minibatch_order": "rlkit.workers.batching",
    "train_minibatch": "rlkit.workers.train_step",
    "ModelRole": "rlkit.workers.role",
    "PolicyWorker": "rlkit.workers.policy",
    "response_logprobs": "rlkit.workers.policy",
    "ReferenceWorker": "rlkit.workers.reference",
    "CriticWorker": "rlkit.workers.critic",
    "clipped_value_loss": "rlkit.workers.critic",
    "RewardModelWorker": "rlkit.workers.reward_model",
    "RuleRewardWorker": "rlkit.workers.reward_model",
    "rule_scores": "rlkit.workers.reward_model",
    "bradley_terry_loss": "rlkit.workers.reward_model",
    "SFTTrainer": "rlkit.workers.sft",
    "run_sft": "rlkit.workers.sft",
    "sft_loss": "rlkit.workers.sft",
    "RewardModelTrainer": "rlkit.workers.rm_training",
    "run_rm": "rlkit.workers.rm_training",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlkit.workers' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
