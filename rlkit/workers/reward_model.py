"""Reward (and cost) models: a sequence score at the last real token; a rule function can stand in.

`RewardModelWorker` wraps an `AutoModelForSequenceClassification` with one output.
The score of a row is the head's output at its last real token (the last response
token, EOS included; the last prompt token for an empty response), found from the
masks rather than from `pad_token_id`, so left-padded prompts and pad == EOS are
fine. A Safe-RLHF cost model is the same class trained on cost labels and writing
`costs` instead of `scores`.

The same worker trains on preference pairs (`update`, Bradley-Terry loss; see
`rlkit.workers.rm_training` for the driver). Pair layout in a Batch: rows 2i and
2i+1 are the chosen and the rejected response to the same prompt, and `group_id`
holds i for both.

`RuleRewardWorker` has the same `score` method over a plain Python rule
(`fn(response_text, ground_truth, eos_seen) -> float`, e.g. `rlkit.data.arithmetic_reward`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import PretrainedConfig

from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.workers.batching import (
    chunks,
    last_token_index,
    local_minibatch_size,
    mean_padded_length,
    require_fields,
    sequence_inputs,
)
from rlkit.workers.checkpoint import load_checkpoint, save_checkpoint
from rlkit.workers.common import CallStats, Residency, load_tokenizer
from rlkit.workers.optim import Optimizer, OptimConfig
from rlkit.workers.sharded import ShardedModel
from rlkit.workers.train_step import LossFn, train_epochs

SCORE_FIELDS = ("scores", "costs")


def sequence_scores(model: ShardedModel, mb: Batch) -> torch.Tensor:
    """(b,) float32 score of each row: the head's output at the row's last real token."""
    ids, mask, positions, prompt_len = sequence_inputs(mb)
    scores = model.forward(ids, mask, positions)  # (b, L)
    index = last_token_index(mb, prompt_len).to(scores.device)  # (b,)
    return scores.gather(1, index.unsqueeze(1)).squeeze(1)


def check_pairs(batch: Batch, where: str) -> None:
    """Raise unless rows come as (chosen, rejected) pairs: an even count, equal group_id within a pair."""
    if len(batch) % 2:
        raise ValueError(
            f"{where}: {len(batch)} rows on this rank; preference pairs need an even count (rows 2i, 2i+1). "
            "Give a number of pairs divisible by the number of ranks."
        )
    if batch.group_id is not None and not torch.equal(batch.group_id[0::2], batch.group_id[1::2]):
        raise ValueError(
            f"{where}: rows 2i and 2i+1 must be the chosen and rejected response of one pair (same group_id); "
            f"got group_id {batch.group_id.tolist()[:8]}..."
        )


def bradley_terry_loss(outputs: dict, mb: Batch, global_tokens: float, global_seqs: float):
    """`-log sigmoid(r_chosen - r_rejected)` summed over this micro-batch's pairs / all pairs of the step.

    Pairs whose chosen row is padding (no response token) carry no weight. Metrics:
    `accuracy` (chosen scored higher), `margin` (mean r_chosen - r_rejected), per pair.
    """
    scores = outputs["scores"]  # (b,) = (2 * pairs,)
    chosen, rejected = scores[0::2], scores[1::2]
    valid = (mb.response_mask[0::2].sum(-1) > 0).to(scores.device)  # (pairs,)
    margin = chosen - rejected
    losses = torch.where(valid, -F.logsigmoid(margin), torch.zeros((), device=scores.device))
    loss = losses.sum() / max(1.0, global_seqs / 2)
    n = valid.sum().clamp(min=1)
    with torch.no_grad():
        metrics = {
            "accuracy": ((margin > 0) & valid).sum() / n,
            "margin": torch.where(valid, margin, torch.zeros_like(margin)).sum() / n,
        }
    return loss, metrics


class RewardModelWorker:
    """An FSDP2 sequence-score model: `score` for RL, `update` for reward-model training."""

    def __init__(
        self,
        ctx: WorkerContext,
        model: str | os.PathLike | PretrainedConfig,
        *,
        field: str = "scores",
        trainable: bool = False,
        optim: OptimConfig | dict | None = None,
        micro_batch_size: int = 4,
        mini_batch_size: int | None = None,
        offload: bool = False,
        gradient_checkpointing: bool = False,
        tokenizer_path: str | os.PathLike | None = None,
        mixed_precision: bool | None = None,
        attn_implementation: str | None = None,
        seed: int = 0,
        shard_one_rank: bool = False,
        name: str | None = None,
    ):
        """
        model: a reward-model folder, or a causal-LM folder / hub name / config to train one from.
        field: the Batch field `score` writes: "scores" (reward model) or "costs" (cost model).
        trainable: build an optimizer and allow `update` (reward-model training).
        micro_batch_size: rows per forward (pairs: must be even).
        shard_one_rank: FSDP2-wrap the model even with one rank (`ShardedModel(shard=True)`).
        """
        if field not in SCORE_FIELDS:
            raise ValueError(f"RewardModelWorker(field={field!r}): allowed {', '.join(SCORE_FIELDS)}")
        self.ctx, self.field = ctx, field
        self.name = name or ("reward" if field == "scores" else "cost")
        self.tokenizer = load_tokenizer(model, tokenizer_path)
        self.model = ShardedModel(
            model,
            kind="token_scores",
            device=ctx.device,
            trainable=trainable,
            mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing,
            attn_implementation=attn_implementation,
            tokenizer=self.tokenizer,
            seed=seed,
            shard=True if shard_one_rank else None,
        )
        self.optimizer = None
        if trainable:
            optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**(optim or {}))
            self.optimizer = Optimizer(self.model.module, optim)
        self.micro_batch_size, self.mini_batch_size = micro_batch_size, mini_batch_size
        self.residency = Residency(self.model, self.optimizer, offload)
        self.stats = CallStats(self.model, self.name)

    @register("split")
    @torch.no_grad()
    def score(self, batch: Batch) -> Batch:
        """A Batch holding only this model's field (`scores` or `costs`), (B,) float32."""
        require_fields(batch, ("prompt_ids", "response_ids", "response_mask"), f"{self.name}.score")
        parts, lengths = [], []
        with self.residency.on_device(), self.stats.measure("score", backward=False) as info:
            for mb in chunks(batch, self.micro_batch_size):
                parts.append(sequence_scores(self.model, mb).cpu())
                lengths.append(mean_padded_length(mb))
            info["tokens"] = batch.num_tokens()
            info["seq_len"] = sum(lengths) / max(1, len(lengths))
        return Batch(**{self.field: torch.cat(parts)}, batch_size=[len(batch)])

    @register("split")
    def update(
        self,
        batch: Batch,
        loss_fn: LossFn | None = None,
        *,
        mini_batch_size: int | None = None,
        micro_batch_size: int | None = None,
    ) -> dict[str, float]:
        """One pass of optimizer steps over this rank's preference pairs (Bradley-Terry by default).

        `mini_batch_size` counts rows (2 per pair) over all ranks; `outputs` given to
        `loss_fn` is {"scores": (b,)}. Metrics are means over pairs.
        """
        where = f"{self.name}.update"
        if self.optimizer is None:
            raise RuntimeError(f"{where}: this reward model was built with trainable=False")
        require_fields(batch, ("prompt_ids", "response_ids", "response_mask"), where)
        check_pairs(batch, where)
        rows = local_minibatch_size(mini_batch_size or self.mini_batch_size, self.model.world_size, len(batch))
        micro = micro_batch_size or self.micro_batch_size
        if rows % 2 or micro % 2:
            raise ValueError(
                f"{where}: rows per step on a rank ({rows}) and micro_batch_size ({micro}) must be even "
                "so a pair is never cut in two"
            )

        def forward(mb: Batch) -> dict[str, torch.Tensor]:
            return {"scores": sequence_scores(self.model, mb)}

        return train_epochs(self, batch, rows=rows, micro_batch_size=micro, epochs=1, forward=forward,
                            loss_fn=loss_fn or bradley_terry_loss, where=where, metric_weight="seqs")

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
        """Export a Hugging Face sequence-classification folder (num_labels=1) with the tokenizer."""
        with self.residency.on_device():
            return str(self.model.save_pretrained(path, tokenizer=self.tokenizer))

    @register("broadcast")
    def pop_stats(self) -> list[dict[str, float]]:
        return self.stats.pop()

    @staticmethod
    def kwargs_from_config(cfg: Any, field: str = "scores") -> dict[str, Any]:
        """Constructor kwargs for scoring in RL: `model.reward_model_path` (or `cost_model_path`)."""
        path = cfg.model.reward_model_path if field == "scores" else cfg.model.cost_model_path
        if path is None:
            key = "model.reward_model_path" if field == "scores" else "model.cost_model_path"
            raise ValueError(f"{key} is not set: give a trained reward/cost model folder, or use a rule reward")
        return {
            "model": path,
            "field": field,
            "micro_batch_size": cfg.critic.micro_batch_size,
            "attn_implementation": cfg.model.attn_implementation,
            "seed": cfg.seed,
            "shard_one_rank": cfg.cluster.shard_one_rank,
        }


RuleFn = Callable[[str, Any, bool], float]


def rule_scores(batch: Batch, fn: RuleFn, tokenizer: Any) -> torch.Tensor:
    """(B,) float32: `fn(response_text, ground_truth, eos_seen)` per row, the text decoded up to EOS."""
    from rlkit.data import decode_responses

    require_fields(batch, ("response_ids", "response_mask", "ground_truth"), "rule_scores")
    texts, eos_seen = decode_responses(tokenizer, batch.response_ids, batch.response_mask)
    values = [float(fn(text, truth, bool(eos))) for text, truth, eos in zip(texts, batch.ground_truth, eos_seen)]
    return torch.tensor(values, dtype=torch.float32)


class RuleRewardWorker:
    """A rule function in the reward model's place: same `score` method, no model.

    It can run in the worker group (next to the other roles) or be called on the
    driver with `rule_scores`; either way the rule sees decoded text.
    """

    def __init__(self, ctx: WorkerContext, fn: RuleFn, tokenizer_path: str | os.PathLike, *, field: str = "scores"):
        """fn: `(response_text, ground_truth, eos_seen) -> float`; tokenizer_path: decodes the responses."""
        if field not in SCORE_FIELDS:
            raise ValueError(f"RuleRewardWorker(field={field!r}): allowed {', '.join(SCORE_FIELDS)}")
        self.ctx, self.fn, self.field = ctx, fn, field
        self.tokenizer = load_tokenizer(None, tokenizer_path)

    @register("split")
    def score(self, batch: Batch) -> Batch:
        """A Batch holding only `field` (B,): the rule applied to every row."""
        return Batch(**{self.field: rule_scores(batch, self.fn, self.tokenizer)}, batch_size=[len(batch)])


__all__ = [
    "RewardModelWorker",
    "RuleRewardWorker",
    "sequence_scores",
    "bradley_terry_loss",
    "check_pairs",
    "rule_scores",
    "SCORE_FIELDS",
]
