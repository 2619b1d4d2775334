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

from typing import Any

import torch

from rlkit.algos.core import value_loss
from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.workers import role
from rlkit.workers.batching import pad_response, sequence_inputs
from rlkit.workers.optim import OptimConfig
from rlkit.workers.packing import pack_sequences
from rlkit.workers.sharded import ShardedModel
from rlkit.workers.train_step import LossFn


def token_values(model: ShardedModel, mb: Batch, *, pack: bool = False) -> torch.Tensor:
    """(b, T) float32 values V(s_t) of `mb`'s response tokens, 0 on padding. `pack`: the rows as one
    packed row without padding (`rlkit.workers.packing`), equal to the padded computation to rounding."""
    if pack:
        packed = pack_sequences(mb)
        scores = model.forward(packed.input_ids, None, packed.position_ids)  # (1, N)
        values = scores[0][packed.predict_index.to(scores.device)]  # (b, T'): each token's predicting position
    else:
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
            mb.policy_mask().to(device),  # values are trained on the policy's tokens only
            clip=clip,
            agg=agg,
            global_tokens=global_tokens,
            global_seqs=global_seqs,
        )

    return loss_fn


class CriticWorker:
    """A trainable FSDP2 value model."""

    def __init__(self, ctx: WorkerContext, model: role.ModelSource, *, value_clip: float | None = 0.5,
                 loss_agg: str = "token-mean", name: str = "critic", **options: Any):
        """
        model: a reward-model folder, a causal-LM folder / hub name (fresh head), or a config.
        value_clip: clip range of the value loss around the rollout-time values (None: unclipped).
        loss_agg: how the default value loss aggregates tokens (see `rlkit.algos.core.aggregate`).
        options: `ModelRole`'s (optim, mini_batch_size, micro_batch_size, epochs, offload, ...), as for
            `PolicyWorker`.
        """
        self.ctx, self.name = ctx, name
        self.core = role.ModelRole(model, kind="token_scores", name=name, device=ctx.device, trainable=True,
                                          **options)
        self.default_loss = clipped_value_loss(value_clip, loss_agg)

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
            "max_tokens_per_micro_batch": critic.max_tokens_per_micro_batch,
            "pack_sequences": critic.pack_sequences,
            **role.model_kwargs_from_config(cfg),
        }

    def _forward(self, mb: Batch) -> dict[str, torch.Tensor]:
        """`mb -> {"values": (b, T)}`."""
        return {"values": token_values(self.core.model, mb, pack=self.core.packing)}

    @register("split")
    def compute_values(self, batch: Batch) -> Batch:
        """A Batch holding only `values` (B, T)."""
        return Batch(values=self.core.infer(batch, "compute_values", self._forward)["values"], batch_size=[len(batch)])

    @register("split")
    def update(self, batch: Batch, loss_fn: LossFn | None = None, **overrides: int | None) -> dict[str, float]:
        """Value-loss optimizer steps over this rank's rows (the default clipped loss needs `values` and
        `returns`). `outputs` given to a custom `loss_fn`: {"values": (b, T)}, with grad.
        overrides: mini_batch_size / micro_batch_size / epochs for this call (None: the constructor's)."""
        needs = ("values", "returns") if loss_fn is None else ()
        return self.core.train(batch, loss_fn or self.default_loss, self._forward, needs=needs, **overrides)

    # ------------------------------------------------------------------ state (shared with every model role)

    save_checkpoint = role.save_checkpoint
    load_checkpoint = role.load_checkpoint
    save_pretrained = role.save_pretrained
    full_state_dict = role.full_state_dict
    pop_stats = role.pop_stats


__all__ = ["CriticWorker", "token_values", "clipped_value_loss"]
