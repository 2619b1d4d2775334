"""The reference role: a frozen copy of the starting policy, log-probs only.

Used for the KL penalty / KL loss against the policy the run started from. No
optimizer, no gradients; with `offload=True` its parameters wait in CPU memory
between calls so a colocated actor has the device to itself.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from rlkit.algos.chunked_logits import DEFAULT_CHUNK_SIZE
from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.rollout.sampling import logprob_temperature
from rlkit.workers import role
from rlkit.workers.policy import check_chunk_size, response_logprobs


class ReferenceWorker:
    """Frozen FSDP2 causal LM computing `ref_logprobs`."""

    def __init__(self, ctx: WorkerContext, model: role.ModelSource, *, temperature: float = 1.0,
                 name: str = "ref", logits_chunk_size: int = DEFAULT_CHUNK_SIZE, **options: Any):
        """
        model: the same source as the policy's starting point (hub name, folder or config + seed).
        temperature: the rollout temperature; log-probs are taken at `logprob_temperature(temperature)`,
            the rule the policy follows (1 for greedy 0), so reference and policy log-probs compare.
        logits_chunk_size: tokens per chunk of the log-prob head (0: whole logits at once), as the policy's.
        options: `ModelRole`'s (micro_batch_size, offload, tokenizer_path, mixed_precision,
            attn_implementation, seed, shard_one_rank).
        """
        self.ctx, self.name = ctx, name
        self.logits_chunk_size = check_chunk_size(logits_chunk_size, name)
        self.core = role.ModelRole(model, kind="causal_lm", name=name, device=ctx.device, trainable=False,
                                          **options)
        self.temperature = logprob_temperature(temperature)

    @staticmethod
    def kwargs_from_config(cfg: Any) -> dict[str, Any]:
        """Constructor kwargs from an `rlkit.config.Config` (the reference starts from the actor's model)."""
        return {
            "model": cfg.model.path,
            "micro_batch_size": cfg.actor.micro_batch_size,
            "temperature": logprob_temperature(cfg.rollout.temperature),
            "offload": cfg.actor.offload,
            "logits_chunk_size": cfg.actor.logits_chunk_size,
            "max_tokens_per_micro_batch": cfg.actor.max_tokens_per_micro_batch,
            "pack_sequences": cfg.actor.pack_sequences,
            **role.model_kwargs_from_config(cfg),
        }

    @register("split")
    def compute_logprobs(self, batch: Batch, field: str = "ref_logprobs") -> Batch:
        """A Batch holding only `field` (B, T): reference log-probs of the response tokens, 0 on padding."""
        forward = partial(response_logprobs, self.core.model, temperature=self.temperature, with_entropy=False,
                          chunk_size=self.logits_chunk_size, pack=self.core.packing)
        return Batch(**{field: self.core.infer(batch, "compute_logprobs", forward)["logprobs"]},
                     batch_size=[len(batch)])

    # ------------------------------------------------------------------ state (shared with every model role)

    save_checkpoint = role.save_checkpoint
    load_checkpoint = role.load_checkpoint
    save_pretrained = role.save_pretrained
    full_state_dict = role.full_state_dict
    pop_stats = role.pop_stats


__all__ = ["ReferenceWorker"]
