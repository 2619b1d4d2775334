"""Stage 2 of RLHF: reward-model training on preference pairs (Bradley-Terry), and cost models.

The loss is `-log sigmoid(r(x, y_high) - r(x, y_low))` (Bradley & Terry 1952; as
used for RLHF reward models by Ouyang et al. 2022, arXiv 2203.02155, eq. 1), run by
`RewardModelWorker.update` with the same FSDP2 machinery as the policy. The metric
is pairwise accuracy: the fraction of held-out pairs the model orders correctly.

Pairs from a rule. For built-in tasks the preference labels come from a rule
(`fn(response_text, ground_truth, eos_seen) -> float`): for every prompt, a few
candidate responses are made (the reference answer, the answer without EOS, wrong
numbers near and far, the answer with trailing junk), the rule scores them, and
one pair with different scores is kept, the higher-scored response first. With
`rlkit.data.arithmetic_reward` this trains a reward model; with
`rlkit.data.arithmetic_cost` (higher = more costly) a Safe-RLHF cost model, which
writes `costs` instead of `scores`.

From a notebook:

    trainer = RewardModelTrainer(cfg, out_dir="runs/rm")
    trainer.fit(); trainer.evaluate()["accuracy"]; trainer.save(); trainer.close()

or cached in one call: `run_rm(cfg, out_dir)`; from a shell: `rlkit rm --preset arithmetic-tiny`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rlkit.batch import Batch
from rlkit.workers.stage import StageRunner

RM_META = "rm.json"
RuleFn = Callable[[str, str, bool], float]


@dataclass
class RMConfig:
    """Knobs of reward/cost-model training (model, data and cluster come from `rlkit.config.Config`)."""

    steps: int = 300
    """Optimizer steps."""
    pairs_per_step: int = 32
    """Preference pairs per optimizer step, over all ranks (2 rows each)."""
    micro_batch_size: int = 64
    """Rows per forward/backward on one rank (even: a pair is never cut)."""
    lr: float = 3e-3
    """Peak learning rate."""
    warmup_steps: int = 20
    """Linear warm-up steps."""
    lr_schedule: str = "cosine"
    """"constant", "cosine" or "linear" decay to `min_lr_ratio * lr` at `steps`."""
    min_lr_ratio: float = 0.1
    """Floor of the decay."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW (beta1, beta2); a short beta2 memory suits runs of a few hundred steps."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clip."""
    eval_pairs: int = 256
    """Held-out pairs (from eval-split prompts) for the accuracy."""
    field: str = "scores"
    """"scores" for a reward model, "costs" for a cost model (what the trained model writes in RL)."""


# ----------------------------------------------------------------------------- pairs


def candidate_responses(truth: str, rng: random.Random) -> list[tuple[str, bool]]:
    """Responses (text, eos_seen) to rank for one prompt whose reference answer is `truth`."""
    out = [(truth, True), (truth, False)]  # correct; correct but never stopped
    try:
        value = int(truth)
    except ValueError:  # a non-numeric answer: only the text-level corruptions
        value = None
    if value is not None:
        near = value + rng.choice([-1, 1]) * rng.randint(1, 10)
        far = value + rng.choice([-1, 1]) * rng.randint(11, 100)
        out += [(str(near), True), (str(max(0, far)), True)]
    out.append((truth + rng.choice(["!", "0", " 1", "=", "+"]), True))
    return out


def rule_pairs(
    prompts: Sequence[str], truths: Sequence[str], fn: RuleFn, seed: int
) -> list[tuple[str, tuple[str, bool], tuple[str, bool]]]:
    """One (prompt, higher-scored response, lower-scored response) per prompt where the rule
    tells two candidates apart; responses are (text, eos_seen)."""
    rng = random.Random(seed)
    pairs = []
    for prompt, truth in zip(prompts, truths):
        scored = [(fn(text, truth, eos), (text, eos)) for text, eos in candidate_responses(str(truth), rng)]
        rng.shuffle(scored)
        high = max(scored, key=lambda s: s[0])
        lows = [s for s in scored if s[0] < high[0]]
        if lows:
            pairs.append((prompt, high[1], rng.choice(lows)[1]))
    return pairs


def encode_pairs(
    tokenizer: Any,
    pairs: Sequence[tuple[str, tuple[str, bool], tuple[str, bool]]],
    *,
    max_prompt_len: int,
    chat_template: bool = False,
) -> Batch:
    """2 rows per pair (higher first), `group_id` = pair index; EOS appended where `eos_seen`."""
    from rlkit.data import encode_prompts

    if not pairs:
        raise ValueError("encode_pairs: no pairs (the rule scored every candidate the same?)")
    prompts = [p for p, _, _ in pairs for _ in range(2)]
    responses = [r for _, high, low in pairs for r in (high, low)]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, max_prompt_len, chat_template=chat_template)
    rows = []
    for i, (text, eos) in enumerate(responses):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if eos else [])
        if not ids:
            raise ValueError(f"encode_pairs: pair {i // 2} has an empty response (no token and no EOS)")
        rows.append(ids)
    width = max(len(r) for r in rows)
    response_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    return Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        group_id=torch.arange(len(rows)) // 2,
        prompt_text=prompts,
        response_text=[t for t, _ in responses],
        batch_size=[len(rows)],
    )


def pairwise_accuracy(scores: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean margin) of scores laid out as (higher, lower) pairs: rows 2i, 2i+1."""
    margin = scores[0::2] - scores[1::2]
    return float((margin > 0).float().mean()), float(margin.mean())


# ----------------------------------------------------------------------------- trainer


class RewardModelTrainer:
    """Bradley-Terry training of a reward (or cost) model on rule-labelled pairs, from the notebook."""

    def __init__(
        self,
        cfg: Any,
        *,
        rm: RMConfig | None = None,
        rule: RuleFn | None = None,
        out_dir: str | Path = "runs/rm",
    ):
        """cfg: an `rlkit.config.Config`; the model starts from `model.path` (e.g. the SFT result)
        or the tiny preset, with a fresh one-output head. rule: defaults to the arithmetic
        reward (`rm.field="scores"`) or cost (`rm.field="costs"`)."""
        from rlkit.data import arithmetic_cost, arithmetic_reward

        self.cfg, self.rm = cfg, rm or RMConfig()
        r = self.rm
        if r.pairs_per_step % cfg.world_size:
            raise ValueError(
                f"rm.pairs_per_step={r.pairs_per_step} must be divisible by the number of ranks ({cfg.world_size})"
            )
        self.rule = rule or (arithmetic_reward if r.field == "scores" else arithmetic_cost)
        optim = {
            "lr": r.lr, "warmup_steps": r.warmup_steps, "lr_schedule": r.lr_schedule, "total_steps": r.steps,
            "min_lr_ratio": r.min_lr_ratio, "weight_decay": r.weight_decay, "grad_clip": r.grad_clip,
            "betas": r.betas,
        }
        self.role = "reward" if r.field == "scores" else "cost"
        self.runner = StageRunner(
            cfg, out_dir, role=self.role, kind="token_scores", optim=optim, micro_batch_size=r.micro_batch_size,
            role_kwargs={"field": r.field},
        )
        self.history: list[dict[str, float]] = []
        self._eval_batch: Batch | None = None
        self._draws = 0  # seeds the candidate corruptions of each draw

    @property
    def worker(self):
        return getattr(self.runner.group, self.role)

    def next_batch(self) -> Batch:
        """The next step's pairs (from training prompts), encoded; prompts where the rule finds no
        difference are skipped, so draw until the step is full."""
        pairs = []
        while len(pairs) < self.rm.pairs_per_step:
            rows, _ = self.runner.next_rows(self.rm.pairs_per_step - len(pairs))
            self._draws += 1
            pairs += rule_pairs(rows["prompt"], rows["ground_truth"], self.rule, seed=self.cfg.seed * 1_000_003 + self._draws)
        d = self.cfg.data
        return encode_pairs(self.runner.tokenizer, pairs, max_prompt_len=d.max_prompt_len, chat_template=d.use_chat_template)

    def step(self) -> dict[str, float]:
        metrics = self.worker.update(self.next_batch(), mini_batch_size=None)[0]
        self.history.append(metrics)
        return metrics

    def fit(self, steps: int | None = None, *, progress: bool = True) -> list[dict[str, float]]:
        """Run `steps` optimizer steps (default: the rest of `rm.steps`) with a progress bar."""
        todo = steps if steps is not None else max(0, self.rm.steps - len(self.history))
        out = []
        for _ in self.runner.progress(todo, f"{self.role} model", progress):
            metrics = self.step()
            p = self.role
            self.runner.show(metrics, {"loss": f"{p}/loss", "acc": f"{p}/accuracy", "lr": f"{p}/lr"})
            out.append(metrics)
        return out

    def eval_batch(self) -> Batch:
        """Held-out pairs from the eval-split prompts (fixed for the trainer's life)."""
        if self._eval_batch is None:
            rows = self.runner.eval_rows(self.rm.eval_pairs)
            pairs = rule_pairs(list(rows["prompt"]), list(rows["ground_truth"]), self.rule, seed=self.cfg.seed + 1)
            d = self.cfg.data
            self._eval_batch = encode_pairs(
                self.runner.tokenizer, pairs, max_prompt_len=d.max_prompt_len, chat_template=d.use_chat_template
            )
        return self._eval_batch

    def evaluate(self) -> dict[str, float]:
        """Pairwise accuracy and mean margin on the held-out pairs."""
        batch = self.eval_batch()
        scores = getattr(self.worker.score(batch), self.rm.field)
        accuracy, margin = pairwise_accuracy(scores)
        return {"accuracy": accuracy, "margin": margin, "pairs": len(batch) // 2}

    def save(self, path: str | Path | None = None) -> Path:
        """Export a Hugging Face sequence-classification folder (default `out_dir/model`)."""
        return self.runner.save(path)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "RewardModelTrainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class RMResult:
    """What `run_rm` produced."""

    model_dir: Path
    """Hugging Face folder of the reward (cost) model: `model.reward_model_path` (`cost_model_path`)."""
    accuracy: float
    """Held-out pairwise accuracy."""
    cached: bool
    """True when the folder already held this config's result."""


def run_rm(
    cfg: Any,
    out_dir: str | Path = "runs/rm",
    *,
    rm: RMConfig | None = None,
    rule: RuleFn | None = None,
    force: bool = False,
    progress: bool = True,
) -> RMResult:
    """Train, evaluate and export to `out_dir/model`, reusing a folder that holds the same config's result.

    A custom `rule` is part of the cache key by its qualified name. This is what `rlkit rm` runs.
    """
    rm = rm or RMConfig()
    out_dir = Path(out_dir)
    rule_name = f"{rule.__module__}.{rule.__qualname__}" if rule is not None else "default"
    payload = {"model": asdict(cfg.model), "data": asdict(cfg.data), "seed": cfg.seed, "rm": asdict(rm), "rule": rule_name}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    meta_file = out_dir / RM_META
    if not force and meta_file.is_file() and (out_dir / "model" / "config.json").is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("fingerprint") == key:
            return RMResult(out_dir / "model", meta["accuracy"], cached=True)
    with RewardModelTrainer(cfg, rm=rm, rule=rule, out_dir=out_dir) as trainer:
        trainer.fit(progress=progress)
        accuracy = trainer.evaluate()["accuracy"]
        model_dir = trainer.save(out_dir / "model")
    meta_file.write_text(json.dumps({"fingerprint": key, "accuracy": accuracy, "rm": asdict(rm)}, indent=2))
    return RMResult(model_dir, accuracy, cached=False)


__all__ = [
    "RMConfig",
    "RewardModelTrainer",
    "RMResult",
    "run_rm",
    "rule_pairs",
    "candidate_responses",
    "encode_pairs",
    "pairwise_accuracy",
]
