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
(`fn(response_text, ground_truth, eos_seen) -> float`, e.g. `rlkit.data.arithmetic_reward`, or verl's
`compute_score`); `rule_scores` runs one on the driver (`rlkit.rewards.score_rows`: threads, timeout, errors
that name the row).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.workers import role
from rlkit.workers.batching import last_token_index, require_fields, sequence_inputs
from rlkit.workers.common import load_tokenizer
from rlkit.workers.sharded import ShardedModel
from rlkit.workers.train_step import LossFn

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


def check_pair_steps(batch: Batch, rows: int, micro_batch_size: int, where: str) -> None:
    """Raise unless `batch` holds whole pairs and no optimizer step (`rows` per rank) or micro-batch
    cuts a pair in two; the `check` of `ModelRole.train` for preference training."""
    check_pairs(batch, where)
    if rows % 2 or micro_batch_size % 2:
        raise ValueError(
            f"{where}: rows per step on a rank ({rows}) and micro_batch_size ({micro_batch_size}) must be even "
            "so a pair is never cut in two"
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

    def __init__(self, ctx: WorkerContext, model: role.ModelSource, *, field: str = "scores",
                 trainable: bool = False, name: str | None = None, **options: Any):
        """
        model: a reward-model folder, or a causal-LM folder / hub name / config to train one from.
        field: the Batch field `score` writes: "scores" (reward model) or "costs" (cost model).
        trainable: build an optimizer and allow `update` (reward-model training).
        name: stats prefix; None: "reward" for scores, "cost" for costs.
        options: `ModelRole`'s (optim, micro_batch_size: rows per forward, even for pairs, mini_batch_size,
            offload, gradient_checkpointing, tokenizer_path, mixed_precision, attn_implementation, seed,
            shard_one_rank).
        """
        if field not in SCORE_FIELDS:
            raise ValueError(f"RewardModelWorker(field={field!r}): allowed {', '.join(SCORE_FIELDS)}")
        self.ctx, self.field = ctx, field
        self.name = name or ("reward" if field == "scores" else "cost")
        self.core = role.ModelRole(model, kind="token_scores", name=self.name, device=ctx.device,
                                          trainable=trainable, **options)

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
            # scoring is a no-grad forward like the critic's: the same token budget (rows sorted by length,
            # put back in order by ModelRole.infer); never packed, the score is read at each row's last token
            "max_tokens_per_micro_batch": cfg.critic.max_tokens_per_micro_batch,
            **role.model_kwargs_from_config(cfg, tokenizer=False),
        }

    def _forward(self, mb: Batch) -> dict[str, torch.Tensor]:
        """`mb -> {"scores": (b,)}`."""
        return {"scores": sequence_scores(self.core.model, mb)}

    @register("split")
    def score(self, batch: Batch) -> Batch:
        """A Batch holding only this model's field (`scores` or `costs`), (B,) float32."""
        return Batch(**{self.field: self.core.infer(batch, "score", self._forward)["scores"]}, batch_size=[len(batch)])

    @register("split")
    def update(self, batch: Batch, loss_fn: LossFn | None = None, **overrides: int | None) -> dict[str, float]:
        """One pass of optimizer steps over this rank's preference pairs (Bradley-Terry by default).

        `mini_batch_size` counts rows (2 per pair) over all ranks; `outputs` given to `loss_fn` is
        {"scores": (b,)}. Metrics are means over pairs. overrides: mini_batch_size / micro_batch_size
        for this call (None: the constructor's).
        """
        return self.core.train(batch, loss_fn or bradley_terry_loss, self._forward, check=check_pair_steps,
                               metric_weight="seqs", **overrides)

    # ------------------------------------------------------------------ state (shared with every model role)

    save_checkpoint = role.save_checkpoint
    load_checkpoint = role.load_checkpoint
    save_pretrained = role.save_pretrained
    full_state_dict = role.full_state_dict
    pop_stats = role.pop_stats


RuleFn = Callable[[str, Any, bool], float]


def reward_rows(batch: Batch, tokenizer: Any) -> list:
    """One `rlkit.rewards.RewardRow` per row of `batch`: the response decoded up to EOS, its ground truth,
    EOS flag, data_source, extra_info and prompt text (the last three default to "", {} and "")."""
    from rlkit.data import decode_responses
    from rlkit.rewards import RewardRow

    require_fields(batch, ("response_ids", "response_mask", "ground_truth"), "rule_scores")
    texts, eos_seen = decode_responses(tokenizer, batch.response_ids, batch.response_mask)
    n = len(texts)
    sources = batch.data_source if batch.data_source is not None else [""] * n
    infos = batch.extra_info if batch.extra_info is not None else [{} for _ in range(n)]
    prompts = batch.prompt_text if batch.prompt_text is not None else [""] * n
    return [RewardRow(response_text=text, ground_truth=truth, eos_seen=bool(eos), data_source=source,
                      extra_info=info if info is not None else {}, prompt_text=prompt)
            for text, truth, eos, source, info, prompt in zip(texts, batch.ground_truth, eos_seen.tolist(),
                                                               sources, infos, prompts)]


def rule_scores_and_extras(batch: Batch, fn: Any, tokenizer: Any, *, reward: Any = None,
                           where: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(scores (B,) float32, extras {key: (B,) float32}) of a reward function over `batch`'s decoded rows.

    fn: rlkit's rule `(response_text, ground_truth, eos_seen)` or verl's `compute_score(data_source,
        solution_str, ground_truth, extra_info)` (told apart by its parameter names), sync or async,
        returning a number or a dict with "score" (its other numeric keys are the extras).
    reward: a `RewardConfig` (`cfg.reward`: num_workers, timeout_s); None = its defaults.
    where: put in error messages after the row (e.g. "step 3").
    Raises `rlkit.rewards.RewardError` naming the function, row, prompt and response.
    """
    from rlkit.config.schema import RewardConfig
    from rlkit.rewards import score_rows

    reward = reward if reward is not None else RewardConfig()
    return score_rows(fn, reward_rows(batch, tokenizer), num_workers=reward.num_workers,
                      timeout_s=reward.timeout_s, where=where)


def rule_scores(batch: Batch, fn: RuleFn, tokenizer: Any, *, reward: Any = None, where: str = "") -> torch.Tensor:
    """(B,) float32: the reward function applied to every row, the text decoded up to EOS (extras dropped;
    see `rule_scores_and_extras` for the arguments)."""
    return rule_scores_and_extras(batch, fn, tokenizer, reward=reward, where=where)[0]


class RuleRewardWorker:
    """A rule function in the reward model's place: same `score` method, no model.

    It can run in the worker group (next to the other roles) or be called on the
    driver with `rule_scores`; either way the rule sees decoded text.
    """

    def __init__(self, ctx: WorkerContext, fn: RuleFn, tokenizer_path: str | os.PathLike, *, field: str = "scores",
                 reward: Any = None):
        """fn: a reward function (see `rule_scores_and_extras`); tokenizer_path: decodes the responses;
        reward: a `RewardConfig` (threads, timeout), None = its defaults."""
        if field not in SCORE_FIELDS:
            raise ValueError(f"RuleRewardWorker(field={field!r}): allowed {', '.join(SCORE_FIELDS)}")
        self.ctx, self.fn, self.field, self.reward = ctx, fn, field, reward
        self.tokenizer = load_tokenizer(None, tokenizer_path)

    @register("split")
    def score(self, batch: Batch) -> Batch:
        """A Batch holding only `field` (B,): the rule applied to every row."""
        scores = rule_scores(batch, self.fn, self.tokenizer, reward=self.reward)
        return Batch(**{self.field: scores}, batch_size=[len(batch)])


__all__ = [
    "RewardModelWorker",
    "RuleRewardWorker",
    "sequence_scores",
    "bradley_terry_loss",
    "check_pairs",
    "check_pair_steps",
    "rule_scores",
    "rule_scores_and_extras",
    "reward_rows",
    "SCORE_FIELDS",
]
