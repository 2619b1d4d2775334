"""The policy (actor) role: log-probs and entropy of response tokens, and the update step.

The update takes the loss function from the algorithm (`loss_fn(outputs, mb,
global_tokens, global_seqs) -> (loss, metrics)`, see `rlkit.workers.train_step`),
so an algorithm never touches worker code. `outputs` holds, for the micro-batch
`mb` (b rows, response length T):

    "logprobs": (b, T) log pi(response token t), with grad, 0 on padding
    "entropy":  (b, T) entropy of pi at token t, with grad, 0 on padding

Mini-batches: see `rlkit.workers.batching` (call `interleave_minibatches` on the
driver so a step sees the same samples on 1 or W ranks).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PretrainedConfig

from rlkit.algos.core import entropy_from_logits, logprobs_from_logits
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

LOGPROB_FIELDS = ("old_logprobs", "ref_logprobs", "rollout_logprobs")


def response_logprobs(
    model: ShardedModel,
    mb: Batch,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> dict[str, torch.Tensor]:
    """Log-probs (and entropy) of `mb`'s response tokens under `model`: (b, T) each, 0 on padding.

    Only the logits of the response positions are computed (`logits_to_keep`): the
    logits of the last prompt token predict response token 0. Logits are divided by
    `temperature` so the values match what the rollout engine sampled from.
    """
    ids, mask, positions, prompt_len = sequence_inputs(mb)
    trimmed_t = ids.shape[1] - prompt_len
    logits = model.forward(ids, mask, positions, logits_to_keep=trimmed_t + 1)[:, :-1]  # (b, T', V)
    if temperature != 1.0:
        logits = logits / temperature
    targets = ids[:, prompt_len:].to(logits.device)  # (b, T')
    width = mb.response_ids.shape[1]
    valid = mb.response_mask.to(logits.device).bool()  # (b, T)
    zero = torch.zeros((), device=logits.device)
    out = {"logprobs": torch.where(valid, pad_response(logprobs_from_logits(logits, targets), width), zero)}
    if with_entropy:
        out["entropy"] = torch.where(valid, pad_response(entropy_from_logits(logits), width), zero)
    return out


class PolicyWorker:
    """The actor: a trainable FSDP2 causal LM (one per rank, built by the worker group)."""

    def __init__(
        self,
        ctx: WorkerContext,
        model: str | os.PathLike | PretrainedConfig,
        *,
        optim: OptimConfig | dict | None = None,
        mini_batch_size: int | None = None,
        micro_batch_size: int = 4,
        epochs: int = 1,
        temperature: float = 1.0,
        offload: bool = False,
        gradient_checkpointing: bool = False,
        tokenizer_path: str | os.PathLike | None = None,
        mixed_precision: bool | None = None,
        attn_implementation: str | None = None,
        seed: int = 0,
        shard_one_rank: bool = False,
        name: str = "actor",
    ):
        """
        model: hub name, local folder or transformers config (random init under `seed`).
        optim: AdamW / schedule / clipping (`OptimConfig` or a dict of its fields).
        mini_batch_size: rows per optimizer step over ALL ranks (None: the whole batch, one step per epoch).
        micro_batch_size: rows per forward/backward on one rank (gradient accumulation in between).
        epochs: passes over the batch per `update` (PPO epochs).
        temperature: the rollout sampling temperature (log-probs are taken at it).
        offload: keep parameters and optimizer state on CPU between calls (GPU hosts).
        shard_one_rank: FSDP2-wrap the model even with one rank (`ShardedModel(shard=True)`).
        """
        self.ctx, self.name = ctx, name
        self.tokenizer = load_tokenizer(model, tokenizer_path)
        self.model = ShardedModel(
            model,
            kind="causal_lm",
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
        self.temperature = temperature
        self.residency = Residency(self.model, self.optimizer, offload)
        self.stats = CallStats(self.model, name)

    # ------------------------------------------------------------------ inference

    @register("split")
    def compute_logprobs(self, batch: Batch, field: str = "old_logprobs") -> Batch:
        """A Batch holding only `field` (B, T): log-probs of the response tokens under the current policy."""
        if field not in LOGPROB_FIELDS:
            raise ValueError(f"{self.name}.compute_logprobs: field={field!r}; allowed {', '.join(LOGPROB_FIELDS)}")
        require_fields(batch, ("prompt_ids", "response_ids", "response_mask"), f"{self.name}.compute_logprobs")
        out, _ = self._forward_all(batch, "compute_logprobs", with_entropy=False)
        return Batch(**{field: out["logprobs"]}, batch_size=[len(batch)])

    @register("split")
    def compute_entropy(self, batch: Batch) -> list[float]:
        """[sum of per-token entropies, token count] of this rank's rows (sum the lists for the mean)."""
        require_fields(batch, ("prompt_ids", "response_ids", "response_mask"), f"{self.name}.compute_entropy")
        out, _ = self._forward_all(batch, "compute_entropy", with_entropy=True)
        return [float(out["entropy"].sum()), float(batch.response_mask.sum())]

    def logprobs_and_entropy(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) log-probs and (B, T) entropies of this rank's rows, on CPU (local use and tests)."""
        out, _ = self._forward_all(batch, "compute_logprobs", with_entropy=True)
        return out["logprobs"], out["entropy"]

    @torch.no_grad()
    def _forward_all(self, batch: Batch, call: str, with_entropy: bool) -> tuple[dict[str, torch.Tensor], dict]:
        parts: dict[str, list[torch.Tensor]] = {}
        with self.residency.on_device(), self.stats.measure(call, backward=False) as info:
            lengths = []
            for mb in chunks(batch, self.micro_batch_size):
                out = response_logprobs(self.model, mb, temperature=self.temperature, with_entropy=with_entropy)
                for key, value in out.items():
                    parts.setdefault(key, []).append(value.float().cpu())
                lengths.append(mean_padded_length(mb))
            info["tokens"] = batch.num_tokens()
            info["seq_len"] = sum(lengths) / max(1, len(lengths))
        return {key: torch.cat(values) for key, values in parts.items()}, info["stats"]

    # ------------------------------------------------------------------ training

    @register("split")
    def update(
        self,
        batch: Batch,
        loss_fn: LossFn,
        *,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
        epochs: int | None = None,
    ) -> dict[str, float]:
        """`epochs` passes of optimizer steps over this rank's rows; returns metrics averaged over steps
        (identical on every rank) plus this rank's time/memory/FLOPs, all prefixed with the role name."""
        where = f"{self.name}.update"
        require_fields(batch, ("prompt_ids", "response_ids", "response_mask"), where)
        world = self.model.world_size
        rows = local_minibatch_size(mini_batch_size or self.mini_batch_size, world, len(batch))
        micro = micro_batch_size or self.micro_batch_size

        def forward(mb: Batch) -> dict[str, torch.Tensor]:
            return response_logprobs(self.model, mb, temperature=self.temperature, with_entropy=True)

        return train_epochs(self, batch, rows=rows, micro_batch_size=micro, epochs=epochs or self.epochs,
                            forward=forward, loss_fn=loss_fn, where=where)

    # ------------------------------------------------------------------ state

    @register("rank0")
    def save_checkpoint(self, path: str | os.PathLike, extra: dict | None = None) -> str:
        """Sharded model + optimizer + scheduler under `path` (all ranks write)."""
        with self.residency.on_device():
            return str(save_checkpoint(path, self.model, self.optimizer, extra))

    @register("rank0")
    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Restore what `save_checkpoint` wrote; returns its `extra`."""
        with self.residency.on_device():
            return load_checkpoint(path, self.model, self.optimizer)

    @register("rank0")
    def save_pretrained(self, path: str | os.PathLike) -> str:
        """Export a plain Hugging Face folder (model + tokenizer) loadable with `from_pretrained`."""
        with self.residency.on_device():
            return str(self.model.save_pretrained(path, tokenizer=self.tokenizer))

    @register("rank0")
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The full (unsharded) weights on CPU, gathered on rank 0 (tests, small models, weight sync)."""
        with self.residency.on_device():
            return self.model.full_state_dict()

    @register("broadcast")
    def pop_stats(self) -> list[dict[str, float]]:
        """This rank's per-call measurements since the last call."""
        return self.stats.pop()

    @register("rank0")
    def optimizer_steps(self) -> int:
        return self.optimizer.steps

    @staticmethod
    def kwargs_from_config(cfg: Any) -> dict[str, Any]:
        """Constructor kwargs from an `rlkit.config.Config` (model, actor and rollout sections)."""
        actor = cfg.actor
        return {
            "model": cfg.model.path,
            "optim": OptimConfig.from_section(actor),
            "mini_batch_size": actor.mini_batch_size,
            "micro_batch_size": actor.micro_batch_size,
            "epochs": actor.ppo_epochs,
            "temperature": cfg.rollout.temperature,
            "offload": actor.offload,
            "gradient_checkpointing": actor.gradient_checkpointing,
            "tokenizer_path": cfg.model.tokenizer_path,
            "attn_implementation": cfg.model.attn_implementation,
            "seed": cfg.seed,
            "shard_one_rank": cfg.cluster.shard_one_rank,
        }


__all__ = ["PolicyWorker", "response_logprobs", "LOGPROB_FIELDS"]
