"""The critic role: a value head on a transformer backbone; per-token values and the value update.

The model is a sequence-classification model with one output
(`AutoModelForSequenceClassification`, as a reward model), read at every position:
the critic can start from a trained reward model's folder, or from a causal-LM
checkpoint (the backbone loads, the head starts fresh under the seed).

`values[:, t]` is V(s_t), the value of the state *before* response token t
(prompt + response[:t]); it is read at the position that predicts token t, the
same alignment as the policy's log-probs (see `rlkit.batch.Batch.values`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PretrainedConfig

from rlkit.algos.core import value_loss
from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.workers.batching import (
    chunks,
    local_minibatch_size,
    mean_padded_length,
    pad_response,
    require_fields,
    sequence_inputs,
)
from rlkit.workers.checkpoint import load_checkpoint, save_checkpoint
from rlkit.workers.common import CallStats, Residency, load_tokenizer
from rlkit.workers.optim import Optimizer, OptimConfig
from rlkit.workers.sharded import ShardedModel
from rlkit.workers.train_step import LossFn, train_epochs


def token_values(model: ShardedModel, mb: Batch) -> torch.Tensor:
    """(b, T) float32 values V(s_t) of `mb`'s response tokens, 0 on padding."""
    ids, mask, positions, prompt_len = sequence_inputs(mb)
    scores = model.forward(ids, mask, positions)  # (b, P' + T')
    values = scores[:, prompt_len - 1 : -1]  # (b, T'): position P'-1+t predicts token t
    valid = mb.response_mask.to(values.device).bool()
    return torch.where(valid, pad_response(values, mb.response_ids.shape[1]), torch.zeros((), device=values.device))


def clipped_value_loss(clip: float | None, agg: str = "token-mean") -> LossFn:
    """The PPO value loss as a `loss_fn`: `0.5 max((V-R)^2, (V_clip-R)^2)` against `returns`,
    clipped around the rollout-time `values` (see `rlkit.algos.core.value_loss`)."""

    def loss_fn(outputs: dict, mb: Batch, global_tokens: float, global_seqs: float):
        device = outputs["values"].device
        return value_loss(
            outputs["values"],
            mb.values.to(device),
            mb.returns.to(device),
            mb.response_mask.to(device),
            clip=clip,
            agg=agg,
            global_tokens=global_tokens,
            global_seqs=global_seqs,
        )

    return loss_fn


class CriticWorker:
    """A trainable FSDP2 value model."""

    def __init__(
        self,
        ctx: WorkerContext,
        model: str | os.PathLike | PretrainedConfig,
        *,
        optim: OptimConfig | dict | None = None,
        mini_batch_size: int | None = None,
        micro_batch_size: int = 4,
        epochs: int = 1,
        value_clip: float | None = 0.5,
        loss_agg: str = "token-mean",
        offload: bool = False,
        gradient_checkpointing: bool = False,
        tokenizer_path: str | os.PathLike | None = None,
        mixed_precision: bool | None = None,
        attn_implementation: str | None = None,
        seed: int = 0,
        shard_one_rank: bool = False,
        name: str = "critic",
    ):
        """
        model: a reward-model folder, a causal-LM folder / hub name (fresh head), or a config.
        value_clip: clip range of the value loss around the rollout-time values (None: unclipped).
        Other arguments as in `PolicyWorker`.
        """
        self.ctx, self.name = ctx, name
        self.tokenizer = load_tokenizer(model, tokenizer_path)
        self.model = ShardedModel(
            model,
            kind="token_scores",
            device=ctx.device,
            trainable=True,
            mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing,
            attn_implementation=attn_implementation,
            tokenizer=self.tokenizer,
            seed=seed,
            shard=True if shard_one_rank else None,
        )
        optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**(optim or {}))
        self.optimizer = Optimizer(self.model.module, optim)
        self.mini_batch_size, self.micro_batch_size, self.epochs = mini_batch_size, micro_batch_size, epochs
        self.default_loss = clipped_value_loss(value_clip, loss_agg)
        self.residency = Residency(self.model, self.optimizer, offload)
        self.stats = CallStats(self.model, name)

    @register("split")
    @torch.no_grad()
    def compute_values(self, batch: Batch) -> Batch:
        """A Batch holding only `values` (B, T)."""
        require_fields(batch, ("prompt_ids", "response_ids", "response_mask"), f"{self.name}.compute_values")
        parts, lengths = [], []
        with self.residency.on_device(), self.stats.measure("compute_values", backward=False) as info:
            for mb in chunks(batch, self.micro_batch_size):
                parts.append(token_values(self.model, mb).cpu())
                lengths.append(mean_padded_length(mb))
            info["tokens"] = batch.num_tokens()
            info["seq_len"] = sum(lengths) / max(1, len(lengths))
        return Batch(values=torch.cat(parts), batch_size=[len(batch)])

    @register("split")
    def update(
        self,
        batch: Batch,
        loss_fn: LossFn | None = None,
        *,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        epochs: int | None = None,
    ) -> dict[str, float]:
        """Value-loss optimizer steps over this rank's rows (needs `values` and `returns` for the
        default clipped loss). `outputs` given to a custom `loss_fn`: {"values": (b, T)}."""
        where = f"{self.name}.update"
        needed = ("prompt_ids", "response_ids", "response_mask") + (("values", "returns") if loss_fn is None else ())
        require_fields(batch, needed, where)
        rows = local_minibatch_size(mini_batch_size or self.mini_batch_size, self.model.world_size, len(batch))
        micro = micro_batch_size or self.micro_batch_size
        loss_fn = loss_fn or self.default_loss

        def forward(mb: Batch) -> dict[str, torch.Tensor]:
            return {"values": token_values(self.model, mb)}

        return train_epochs(self, batch, rows=rows, micro_batch_size=micro, epochs=epochs or self.epochs,
                            forward=forward, loss_fn=loss_fn, where=where)

    @register("rank0")
    def save_checkpoint(self, path: str | os.PathLike, extra: dict | None = None) -> str:
        with self.residency.on_device():
            return str(save_checkpoint(path, self.model, self.optimizer, extra))

    @register("rank0")
    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        with self.residency.on_device():
            return load_checkpoint(path, self.model, self.optimizer)

    @register("rank0")
    def save_pretrained(self, path: str | os.PathLike) -> str:
        """Export a Hugging Face sequence-classification folder (num_labels=1)."""
        with self.residency.on_device():
            return str(self.model.save_pretrained(path, tokenizer=self.tokenizer))

    @register("rank0")
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        with self.residency.on_device():
            return self.model.full_state_dict()

    @register("broadcast")
    def pop_stats(self) -> list[dict[str, float]]:
        return self.stats.pop()

    @staticmethod
    def kwargs_from_config(cfg: Any) -> dict[str, Any]:
        """Constructor kwargs from an `rlkit.config.Config` (critic section; starts from
        `model.critic_path`, else the reward model, else the policy's model)."""
        critic = cfg.critic
        source = cfg.model.critic_path or cfg.model.reward_model_path or cfg.model.path
        return {
            "model": source,
            "optim": OptimConfig.from_section(critic, lr_schedule="constant"),
            "mini_batch_size": cfg.actor.mini_batch_size,
            "micro_batch_size": critic.micro_batch_size,
            "epochs": cfg.actor.ppo_epochs,
            "value_clip": critic.value_clip,
            "offload": critic.offload,
            "tokenizer_path": cfg.model.tokenizer_path,
            "attn_implementation": cfg.model.attn_implementation,
            "seed": cfg.seed,
            "shard_one_rank": cfg.cluster.shard_one_rank,
        }


__all__ = ["CriticWorker", "token_values", "clipped_value_loss"]
