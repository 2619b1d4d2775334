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

from functools import partial
from typing import Any

import torch

from rlkit.algos.core import entropy_from_logits, logprobs_from_logits
from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.rollout.sampling import logprob_temperature
from rlkit.workers import role
from rlkit.workers.batching import pad_response, sequence_inputs
from rlkit.workers.optim import OptimConfig
from rlkit.workers.sharded import ShardedModel
from rlkit.workers.train_step import LossFn

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

    def __init__(self, ctx: WorkerContext, model: role.ModelSource, *, temperature: float = 1.0,
                 name: str = "actor", **options: Any):
        """
        model: hub name, local folder or transformers config (random init under `seed`).
        temperature: the rollout sampling temperature; log-probs are taken at
            `logprob_temperature(temperature)` (the temperature itself, 1 for greedy 0).
        options: `ModelRole`'s: optim (AdamW / schedule / clipping: an `OptimConfig` or a dict of its
            fields), mini_batch_size (rows per optimizer step over ALL ranks; None: the whole batch, one
            step per epoch), micro_batch_size (rows per forward/backward on one rank), epochs (passes over
            the batch per `update`, PPO epochs), offload (parameters and optimizer state on CPU between
            calls), gradient_checkpointing, tokenizer_path, mixed_precision, attn_implementation, seed,
            shard_one_rank (FSDP2-wrap even with one rank).
        """
        self.ctx, self.name = ctx, name
        self.core = core = role.ModelRole(model, kind="causal_lm", name=name, device=ctx.device, trainable=True,
                                          **options)
        self.model, self.tokenizer, self.optimizer = core.model, core.tokenizer, core.optimizer
        self.residency, self.stats = core.residency, core.stats
        self.temperature = logprob_temperature(temperature)

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
            "temperature": logprob_temperature(cfg.rollout.temperature),
            "offload": actor.offload,
            "gradient_checkpointing": actor.gradient_checkpointing,
            **role.model_kwargs_from_config(cfg),
        }

    def _forward(self, with_entropy: bool) -> role.ForwardFn:
        """`mb -> {"logprobs": (b, T)[, "entropy": (b, T)]}` at this role's temperature."""
        return partial(response_logprobs, self.model, temperature=self.temperature, with_entropy=with_entropy)

    # ------------------------------------------------------------------ inference

    @register("split")
    def compute_logprobs(self, batch: Batch, field: str = "old_logprobs") -> Batch:
        """A Batch holding only `field` (B, T): log-probs of the response tokens under the current policy."""
        if field not in LOGPROB_FIELDS:
            raise ValueError(f"{self.name}.compute_logprobs: field={field!r}; allowed {', '.join(LOGPROB_FIELDS)}")
        out = self.core.infer(batch, "compute_logprobs", self._forward(False))
        return Batch(**{field: out["logprobs"]}, batch_size=[len(batch)])

    def logprobs_and_entropy(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) log-probs and (B, T) entropies of this rank's rows, on CPU (local use and tests)."""
        out = self.core.infer(batch, "compute_logprobs", self._forward(True))
        return out["logprobs"], out["entropy"]

    # ------------------------------------------------------------------ training

    @register("split")
    def update(self, batch: Batch, loss_fn: LossFn, **overrides: int | None) -> dict[str, float]:
        """`epochs` passes of optimizer steps over this rank's rows; returns metrics averaged over steps
        (identical on every rank) plus this rank's time/memory/FLOPs, all prefixed with the role name.

        `outputs` given to `loss_fn`: {"logprobs": (b, T), "entropy": (b, T)}, with grad.
        overrides: mini_batch_size / micro_batch_size / epochs for this call (None: the constructor's).
        """
        return self.core.train(batch, loss_fn, self._forward(True), **overrides)

    # ------------------------------------------------------------------ state (shared with every model role)

    save_checkpoint = role.save_checkpoint
    load_checkpoint = role.load_checkpoint
    save_pretrained = role.save_pretrained
    full_state_dict = role.full_state_dict
    pop_stats = role.pop_stats

    @register("rank0")
    def optimizer_steps(self) -> int:
        """Optimizer steps taken so far (restored by `load_checkpoint`)."""
        return self.optimizer.steps


__all__ = ["PolicyWorker", "response_logprobs", "LOGPROB_FIELDS"]
