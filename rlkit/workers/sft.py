"""Stage 1 of RLHF: supervised fine-tuning (masked NLL on the response tokens).

SFT is a policy update with a different loss: the same `PolicyWorker` (FSDP2,
micro-batches, global token normalisation) runs `update(batch, sft_loss)`, so
there is no SFT-specific worker code.

From a notebook:

    trainer = SFTTrainer(cfg, out_dir="runs/sft")
    trainer.evaluate()["exact_match"]       # ~0 for a fresh tiny model
    trainer.fit()                           # progress bar (tqdm.auto)
    trainer.evaluate()["exact_match"]
    trainer.save()                          # runs/sft/model: a Hugging Face folder
    trainer.close()

or in one call, cached: `run_sft(cfg, out_dir)` returns at once when `out_dir`
already holds the result of the same config (the RL demo's starting policy).
From a shell: `rlkit sft --preset arithmetic-tiny --out runs/sft`.

Data: `load_prompt_split(cfg.data, ...)` rows; the `ground_truth` column (the
config's `data.answer_key`) is the target response, followed by EOS.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rlkit.algos.core import aggregate, masked_mean
from rlkit.batch import Batch
from rlkit.workers.stage import StageRunner, greedy_answers

SFT_META = "sft.json"


@dataclass
class SFTConfig:
    """Knobs of the SFT stage (the model, data and cluster come from `rlkit.config.Config`)."""

    steps: int = 400
    """Optimizer steps."""
    batch_size: int = 64
    """Rows per optimizer step, over all ranks."""
    micro_batch_size: int = 64
    """Rows per forward/backward on one rank."""
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
    max_response_len: int = 64
    """Longest target response in tokens (EOS included); longer rows are an error naming the row."""
    eval_size: int = 128
    """Eval prompts for exact match (greedy decoding)."""
    eval_every: int = 0
    """Evaluate every this many steps during `fit` (0: only when asked)."""


def sft_loss(outputs: dict, mb: Batch, global_tokens: float, global_seqs: float):
    """Masked NLL of the response tokens, normalised by the response tokens of the whole step.

    Metrics: `nll` (token mean) and `token_accuracy` (exp(-nll) is not accuracy; this is
    the fraction of tokens with log-prob > log 0.5, a cheap "would greedy pick it" bound).
    """
    logprobs = outputs["logprobs"]  # (b, T)
    mask = mb.response_mask.to(logprobs.device)
    loss = aggregate(-logprobs, mask, "token-mean", global_tokens=global_tokens)
    with torch.no_grad():
        metrics = {
            "nll": masked_mean(-logprobs, mask),
            "token_accuracy": masked_mean((logprobs > -0.6931).float(), mask),
        }
    return loss, metrics


def encode_sft(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    max_prompt_len: int,
    max_response_len: int,
    chat_template: bool = False,
    row_ids: Sequence[int] | None = None,
) -> Batch:
    """Prompts (left-padded) and target responses + EOS (right-padded) as a Batch.

    Raises ValueError naming the dataset row (`row_ids[i]`, default i) for an empty or too long response.
    """
    from rlkit.data import encode_prompts

    if len(prompts) != len(responses):
        raise ValueError(f"encode_sft: {len(prompts)} prompts but {len(responses)} responses")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("encode_sft: the tokenizer has no EOS token to end the responses with")
    prompt_ids, prompt_mask = encode_prompts(tokenizer, list(prompts), max_prompt_len, chat_template=chat_template)
    row_ids = list(row_ids) if row_ids is not None else list(range(len(responses)))
    rows = []
    for i, text in enumerate(responses):
        ids = tokenizer(str(text), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(
                f"SFT data row {row_ids[i]} (prompt {prompts[i]!r:.60}) has an empty response: "
                "nothing to learn but EOS. Fix or drop the row."
            )
        ids = ids + [eos]
        if len(ids) > max_response_len:
            raise ValueError(
                f"SFT data row {row_ids[i]} has a {len(ids)}-token response (EOS included), more than "
                f"max_response_len={max_response_len}; raise it or shorten the row"
            )
        rows.append(ids)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    response_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
    response_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    return Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        prompt_text=list(prompts),
        ground_truth=[str(r) for r in responses],
        batch_size=[len(rows)],
    )


class SFTTrainer:
    """Supervised fine-tuning of the config's model, driven from the notebook (or `run_sft`)."""

    def __init__(self, cfg: Any, *, sft: SFTConfig | None = None, out_dir: str | Path = "runs/sft"):
        """cfg: an `rlkit.config.Config` (model, data, cluster, seed). The model starts from
        `model.path`, or from the tiny `model.preset` saved under `out_dir/init`."""
        self.cfg, self.sft = cfg, sft or SFTConfig()
        s = self.sft
        optim = {
            "lr": s.lr, "warmup_steps": s.warmup_steps, "lr_schedule": s.lr_schedule, "total_steps": s.steps,
            "min_lr_ratio": s.min_lr_ratio, "weight_decay": s.weight_decay, "grad_clip": s.grad_clip,
            "betas": s.betas,
        }
        self.runner = StageRunner(
            cfg, out_dir, role="actor", kind="causal_lm", optim=optim, micro_batch_size=s.micro_batch_size
        )
        self.history: list[dict[str, float]] = []

    @property
    def steps_done(self) -> int:
        return len(self.history)

    def next_batch(self) -> Batch:
        """The next `batch_size` training rows (reshuffled every epoch), encoded."""
        rows, row_ids = self.runner.next_rows(self.sft.batch_size)
        d = self.cfg.data
        return encode_sft(
            self.runner.tokenizer, rows["prompt"], rows["ground_truth"], max_prompt_len=d.max_prompt_len,
            max_response_len=self.sft.max_response_len, chat_template=d.use_chat_template, row_ids=row_ids,
        )

    def step(self) -> dict[str, float]:
        """One optimizer step on the next batch; returns its metrics."""
        metrics = self.runner.group.actor.update(self.next_batch(), sft_loss, mini_batch_size=None)[0]
        self.history.append(metrics)
        return metrics

    def fit(self, steps: int | None = None, *, progress: bool = True) -> list[dict[str, float]]:
        """Run `steps` optimizer steps (default: the rest of `sft.steps`) with a progress bar."""
        todo = steps if steps is not None else max(0, self.sft.steps - self.steps_done)
        out = []
        for _ in self.runner.progress(todo, "SFT", progress):
            metrics = self.step()
            if self.sft.eval_every and self.steps_done % self.sft.eval_every == 0:
                metrics["actor/exact_match"] = self.evaluate()["exact_match"]
            self.runner.show(metrics, {"nll": "actor/nll", "lr": "actor/lr", "em": "actor/exact_match"})
            out.append(metrics)
        return out

    def evaluate(self, num_prompts: int | None = None) -> dict[str, Any]:
        """Greedy exact match on the eval split, with the current weights (rule: `arithmetic_reward`)."""
        from rlkit.data import arithmetic_reward

        rows = self.runner.eval_rows(num_prompts or self.sft.eval_size)
        model = self.runner.hf_model()
        responses, eos_seen = greedy_answers(
            model, self.runner.tokenizer, list(rows["prompt"]), self.cfg.data.max_prompt_len,
            max_new_tokens=self.cfg.rollout.max_new_tokens, chat_template=self.cfg.data.use_chat_template,
        )
        truths = list(rows["ground_truth"])
        rewards = [arithmetic_reward(r, t, e) for r, t, e in zip(responses, truths, eos_seen)]
        return {
            "exact_match": sum(rewards) / max(1, len(rewards)),
            "prompts": list(rows["prompt"]),
            "responses": responses,
            "ground_truth": truths,
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Export the current weights as a Hugging Face folder (default `out_dir/model`)."""
        return self.runner.save(path)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> "SFTTrainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SFTResult:
    """What `run_sft` produced."""

    model_dir: Path
    """Hugging Face folder of the fine-tuned model (set it as `model.path` of the RL config)."""
    exact_match_before: float | None
    """Eval exact match of the starting model (None when loaded from the cache)."""
    exact_match: float
    """Eval exact match after SFT."""
    cached: bool
    """True when the folder already held this config's result and nothing was trained."""


def fingerprint(cfg: Any, sft: SFTConfig) -> str:
    """Hash of everything that decides the SFT result (model, data, seed, SFT knobs)."""
    payload = {"model": asdict(cfg.model), "data": asdict(cfg.data), "seed": cfg.seed, "sft": asdict(sft)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_sft(
    cfg: Any,
    out_dir: str | Path = "runs/sft",
    *,
    sft: SFTConfig | None = None,
    force: bool = False,
    progress: bool = True,
) -> SFTResult:
    """Fine-tune, evaluate and export to `out_dir/model`; reuse the folder if it holds the same config's result.

    The cache key (`fingerprint`) covers the model, data, seed and SFT sections; `force`
    retrains anyway. This is what `rlkit sft` runs.
    """
    sft = sft or SFTConfig()
    out_dir = Path(out_dir)
    key = fingerprint(cfg, sft)
    meta_file = out_dir / SFT_META
    if not force and meta_file.is_file() and (out_dir / "model" / "config.json").is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("fingerprint") == key:
            return SFTResult(out_dir / "model", None, meta["exact_match"], cached=True)
    with SFTTrainer(cfg, sft=sft, out_dir=out_dir) as trainer:
        before = trainer.evaluate()["exact_match"]
        trainer.fit(progress=progress)
        after = trainer.evaluate()["exact_match"]
        model_dir = trainer.save(out_dir / "model")
    meta = {"fingerprint": key, "exact_match_before": before, "exact_match": after, "sft": asdict(sft)}
    meta_file.write_text(json.dumps(meta, indent=2))  # written last: marks the folder complete
    return SFTResult(model_dir, before, after, cached=False)


__all__ = ["SFTConfig", "SFTTrainer", "SFTResult", "run_sft", "sft_loss", "encode_sft", "fingerprint"]
