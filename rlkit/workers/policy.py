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

import contextlib
from functools import partial
from typing import Any

import torch

from rlkit.algos.chunked_logits import DEFAULT_CHUNK_SIZE
from rlkit.algos.core import entropy_from_logits, logprobs_from_logits
from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.rollout.sampling import logprob_temperature
from rlkit.workers import role
from rlkit.workers.batching import pad_response, sequence_inputs
from rlkit.workers.lora import LoraSpec
from rlkit.workers.optim import OptimConfig
from rlkit.workers.packing import pack_sequences
from rlkit.workers.sharded import ShardedModel
from rlkit.workers.train_step import LossFn

LOGPROB_FIELDS = ("old_logprobs", "ref_logprobs", "rollout_logprobs")


def response_logprobs(
    model: ShardedModel,
    mb: Batch,
    *,
    temperature: float = 1.0,
    with_entropy: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    pack: bool = False,
) -> dict[str, torch.Tensor]:
    """Log-probs (and entropy) of `mb`'s response tokens under `model`: (b, T) each, float32, 0 on padding.

    Only the response positions are computed: the last prompt token's output predicts
    response token 0. Logits are divided by `temperature` so the values match what the
    rollout engine sampled from.

    chunk_size > 0 (the default): from the final hidden states, `chunk_size` tokens at a time
    (`ShardedModel.token_logprobs`), so no (b, T', V) logits exist in forward or backward.
    0: the whole (b, T', V) logits at once (`logits_to_keep`), the reference path; also taken
    for a model whose forward transforms its logits after the LM head (`chunked_head_unsupported`).

    pack: the rows as one packed row without padding (`rlkit.workers.packing`); equal to the padded
    computation to float32 rounding.
    """
    if pack:  # one row (1, N) without padding; predict (b, T'): the columns predicting each response token
        packed = pack_sequences(mb)
        ids, mask, positions, targets = packed.input_ids, None, packed.position_ids, packed.targets
        predict = packed.predict_index
    else:  # (b, P' + T') left/right padded; the last T' + 1 columns predict the response tokens
        ids, mask, positions, prompt_len = sequence_inputs(mb)
        targets, predict = ids[:, prompt_len:], None  # (b, T')
    if chunk_size > 0 and model.chunked_head_unsupported is None:
        logprobs, entropy = model.token_logprobs(ids, mask, positions, targets, temperature=temperature,
                                                 chunk_size=chunk_size, with_entropy=with_entropy,
                                                 predict_index=predict)
    else:
        logits = _response_logits(model, ids, mask, positions, targets.shape[1], predict)  # (b, T', V)
        if temperature != 1.0:
            logits = logits / temperature
        targets = targets.to(logits.device)
        logprobs = logprobs_from_logits(logits, targets)
        entropy = entropy_from_logits(logits) if with_entropy else None
    width = mb.response_ids.shape[1]
    valid = mb.response_mask.to(logprobs.device).bool()  # (b, T)
    zero = torch.zeros((), device=logprobs.device)
    out = {"logprobs": torch.where(valid, pad_response(logprobs, width), zero)}
    if with_entropy:
        out["entropy"] = torch.where(valid, pad_response(entropy, width), zero)
    return out


def _response_logits(model: ShardedModel, ids, mask, positions, width: int, predict) -> torch.Tensor:
    """(b, T', V) logits predicting the T' response tokens: only those positions go through the LM head."""
    if predict is None:
        return model.forward(ids, mask, positions, logits_to_keep=width + 1)[:, :-1]
    b, t = predict.shape
    return model.forward(ids, None, positions, logits_to_keep=predict.reshape(-1))[0].reshape(b, t, -1)


def check_chunk_size(chunk_size: int, where: str) -> int:
    """`chunk_size` if it is a whole number >= 0 (0 = unchunked), else a ValueError naming the config field."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise ValueError(f"{where}: logits_chunk_size={chunk_size!r} (actor.logits_chunk_size) must be an integer "
                         ">= 0: tokens per chunk of the log-prob computation, 0 = the whole logits at once")
    return chunk_size


class PolicyWorker:
    """The actor: a trainable FSDP2 causal LM (one per rank, built by the worker group)."""

    def __init__(self, ctx: WorkerContext, model: role.ModelSource, *, temperature: float = 1.0,
                 name: str = "actor", logits_chunk_size: int = DEFAULT_CHUNK_SIZE, **options: Any):
        """
        model: hub name, local folder or transformers config (random init under `seed`).
        temperature: the rollout sampling temperature; log-probs are taken at
            `logprob_temperature(temperature)` (the temperature itself, 1 for greedy 0).
        logits_chunk_size: tokens per chunk of the log-prob / entropy head (0: whole logits at once).
        options: `ModelRole`'s: optim (AdamW / schedule / clipping: an `OptimConfig` or a dict of its
            fields), mini_batch_size (rows per optimizer step over ALL ranks; None: the whole batch, one
            step per epoch), micro_batch_size (rows per forward/backward on one rank), epochs (passes over
            the batch per `update`, PPO epochs), offload (parameters and optimizer state on CPU between
            calls), gradient_checkpointing, tokenizer_path, mixed_precision, attn_implementation, seed,
            shard_one_rank (FSDP2-wrap even with one rank).
        """
        self.ctx, self.name = ctx, name
        self.logits_chunk_size = check_chunk_size(logits_chunk_size, name)
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
            "logits_chunk_size": actor.logits_chunk_size,
            "max_tokens_per_micro_batch": actor.max_tokens_per_micro_batch,
            "pack_sequences": actor.pack_sequences,
            "lora": LoraSpec.from_config(actor),
            **role.model_kwargs_from_config(cfg),
        }

    def _forward(self, with_entropy: bool) -> role.ForwardFn:
        """`mb -> {"logprobs": (b, T)[, "entropy": (b, T)]}` at this role's temperature."""
        return partial(response_logprobs, self.model, temperature=self.temperature, with_entropy=with_entropy,
                       chunk_size=self.logits_chunk_size, pack=self.core.packing)

    # ------------------------------------------------------------------ inference

    @register("split")
    def compute_logprobs(self, batch: Batch, field: str = "old_logprobs") -> Batch:
        """A Batch holding only `field` (B, T): log-probs of the response tokens under the current policy."""
        if field not in LOGPROB_FIELDS:
            raise ValueError(f"{self.name}.compute_logprobs: field={field!r}; allowed {', '.join(LOGPROB_FIELDS)}")
        # A LoRA policy is its own reference: the same weights with the adapters off (no second model).
        disabled = self.model.adapters_disabled() if field == "ref_logprobs" else contextlib.nullcontext()
        with disabled:
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


__all__ = ["PolicyWorker", "response_logprobs", "check_chunk_size", "LOGPROB_FIELDS"]
