"""The reference role: a frozen copy of the starting policy, log-probs only.

Used for the KL penalty / KL loss against the policy the run started from. No
optimizer, no gradients; with `offload=True` its parameters wait in CPU memory
between calls so a colocated actor has the device to itself.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PretrainedConfig

from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.workers.batching import chunks, require_fields
from rlkit.workers.common import CallStats, Residency, load_tokenizer
from rlkit.workers.batching import mean_padded_length
from rlkit.workers.policy import response_logprobs
from rlkit.workers.sharded import ShardedModel


class ReferenceWorker:
    """Frozen FSDP2 causal LM computing `ref_logprobs`."""

    def __init__(
        self,
        ctx: WorkerContext,
        model: str | os.PathLike | PretrainedConfig,
        *,
        micro_batch_size: int = 4,
        temperature: float = 1.0,
        offload: bool = False,
        tokenizer_path: str | os.PathLike | None = None,
        mixed_precision: bool | None = None,
        attn_implementation: str | None = None,
        seed: int = 0,
        shard_one_rank: bool = False,
        name: str = "ref",
    ):
        """
        model: the same source as the policy's starting point (hub name, folder or config + seed).
        temperature: the rollout temperature, so reference and policy log-probs are comparable.
        offload: keep parameters on CPU between calls (GPU hosts).
        shard_one_rank: FSDP2-wrap the model even with one rank (`ShardedModel(shard=True)`).
        """
        self.ctx, self.name = ctx, name
        self.tokenizer = load_tokenizer(model, tokenizer_path)
        self.model = ShardedModel(
            model,
            kind="causal_lm",
            device=ctx.device,
            trainable=False,
            mixed_precision=mixed_precision,
            attn_implementation=attn_implementation,
            tokenizer=self.tokenizer,
            seed=seed,
            shard=True if shard_one_rank else None,
        )
        self.micro_batch_size, self.temperature = micro_batch_size, temperature
        self.residency = Residency(self.model, None, offload)
        self.stats = CallStats(self.model, name)

    @register("split")
    @torch.no_grad()
    def compute_logprobs(self, batch: Batch, field: str = "ref_logprobs") -> Batch:
        """A Batch holding only `field` (B, T): reference log-probs of the response tokens."""
        require_fields(batch, ("prompt_ids", "response_ids", "response_mask"), f"{self.name}.compute_logprobs")
        parts, lengths = [], []
        with self.residency.on_device(), self.stats.measure("compute_logprobs", backward=False) as info:
            for mb in chunks(batch, self.micro_batch_size):
                out = response_logprobs(self.model, mb, temperature=self.temperature, with_entropy=False)
                parts.append(out["logprobs"].float().cpu())
                lengths.append(mean_padded_length(mb))
            info["tokens"] = batch.num_tokens()
            info["seq_len"] = sum(lengths) / max(1, len(lengths))
        return Batch(**{field: torch.cat(parts)}, batch_size=[len(batch)])

    @register("rank0")
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full weights on CPU, gathered on rank 0."""
        with self.residency.on_device():
            return self.model.full_state_dict()

    @register("broadcast")
    def pop_stats(self) -> list[dict[str, float]]:
        """This rank's per-call measurements since the last call."""
        return self.stats.pop()

    @staticmethod
    def kwargs_from_config(cfg: Any) -> dict[str, Any]:
        """Constructor kwargs from an `rlkit.config.Config` (the reference starts from the actor's model)."""
        return {
            "model": cfg.model.path,
            "micro_batch_size": cfg.actor.micro_batch_size,
            "temperature": cfg.rollout.temperature,
            "offload": cfg.actor.offload,
            "tokenizer_path": cfg.model.tokenizer_path,
            "attn_implementation": cfg.model.attn_implementation,
            "seed": cfg.seed,
            "shard_one_rank": cfg.cluster.shard_one_rank,
        }


__all__ = ["ReferenceWorker"]
