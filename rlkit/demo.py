"""`rlkit demo`: the smallest end-to-end look at the pieces, before any RL.

Build (or load) the model and tokenizer, sample answers for held-out prompts
with transformers `generate`, score them with the rule reward and print a
table and the accuracy. A freshly initialised tiny model scores ~0: this is the
"before" picture that an RL run must improve.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlkit.config import Config
from rlkit.data.arithmetic import arithmetic_reward, score_texts
from rlkit.data.datasets import decode_responses, encode_prompts, load_prompt_split
from rlkit.data.models import load_model_and_tokenizer, save_tiny_model


@dataclass
class DemoResult:
    """What `run_demo` measured."""

    accuracy: float
    """Fraction of prompts whose sampled response earned reward 1."""
    prompts: list[str]
    """The evaluated prompts, in order."""
    responses: list[str]
    """Sampled responses, decoded without special tokens, cut at the first EOS."""
    eos_seen: list[bool]
    """Whether each response ended with EOS (a response without it scores 0)."""
    rewards: list[float]
    """Rule reward per response."""
    model_dir: str
    """Folder the model was loaded from (the saved tiny model, or `model.path`)."""
    seconds: float
    """Wall time of the whole demo."""


def run_demo(
    cfg: Config | None = None,
    *,
    out_dir: str | Path = "runs/demo",
    num_prompts: int = 64,
    show: int = 16,
    print_fn: Callable[[str], None] | None = print,
) -> DemoResult:
    """Sample and score `num_prompts` eval prompts; print `show` rows and the accuracy via `print_fn`.

    cfg: defaults to `Config.preset("arithmetic-tiny")`. Used fields: model.path /
      model.preset / model.tokenizer_path / model.dtype, data.* (source, keys,
      digits, operators, seed, max_prompt_len, use_chat_template), rollout.temperature /
      top_p / top_k / max_new_tokens / seed, and the global seed (tiny model init).
    out_dir: the tiny model is saved under `out_dir/model` when `model.path` is None.
    """
    start = time.perf_counter()
    cfg = cfg if cfg is not None else Config.preset("arithmetic-tiny")
    say = print_fn or (lambda _: None)

    # 1. model + tokenizer: a tiny preset saved offline, or a real checkpoint; both load the same way
    if cfg.model.path is None:
        model_dir = str(save_tiny_model(cfg.model.preset, Path(out_dir) / "model", seed=cfg.seed))
    else:
        model_dir = cfg.model.path
    dtype = torch.bfloat16 if cfg.model.dtype == "bfloat16" else torch.float32  # "auto" = fp32 on CPU
    model, tokenizer = load_model_and_tokenizer(model_dir, dtype, tokenizer_path=cfg.model.tokenizer_path)

    # 2. held-out prompts
    d = cfg.data
    rows = load_prompt_split(d, "eval", num_rows=num_prompts)
    prompts, truths = list(rows["prompt"]), list(rows["ground_truth"])  # datasets 5 returns lazy Columns
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, d.max_prompt_len, chat_template=d.use_chat_template)

    # 3. sample with a fixed seed, without disturbing the caller's RNG
    r = cfg.rollout
    sampling = (
        {"do_sample": True, "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k or None}
        if r.temperature > 0
        else {"do_sample": False}
    )
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(r.seed)
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            max_new_tokens=r.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
    response_ids = output[:, prompt_ids.shape[1] :]  # (B, T); rows that stopped early are padded after EOS

    # 4. score: decode_responses cuts each row at its first EOS, so the padding after it never counts
    responses, eos_seen = decode_responses(tokenizer, response_ids)
    rewards = score_texts(arithmetic_reward, responses, truths, eos_seen)
    accuracy = rewards.mean().item() if len(rewards) else 0.0

    k = show
    say(format_table(prompts[:k], responses[:k], eos_seen[:k].tolist(), rewards[:k].tolist(), truths[:k]))
    if show < len(prompts):
        say(f"... ({len(prompts) - show} more rows)")
    seconds = time.perf_counter() - start
    say(f"accuracy: {accuracy:.3f} ({int(rewards.sum().item())}/{len(prompts)}) | model: {model_dir} | {seconds:.1f} s")
    return DemoResult(
        accuracy=accuracy,
        prompts=list(prompts),
        responses=responses,
        eos_seen=eos_seen.tolist(),
        rewards=rewards.tolist(),
        model_dir=model_dir,
        seconds=seconds,
    )


def format_table(
    prompts: list[str], responses: list[str], eos_seen: list[bool], rewards: list[float], truths: list[str]
) -> str:
    """A plain-text table: prompt | response (+ <eos> when emitted) | expected | reward."""
    cells = [
        (repr(p), repr(resp) + (" <eos>" if eos else ""), repr(t), f"{rew:.1f}")
        for p, resp, eos, rew, t in zip(prompts, responses, eos_seen, rewards, truths)
    ]
    header = ("prompt", "response", "expected", "reward")
    widths = [min(40, max(len(row[i]) for row in [header, *cells])) for i in range(4)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c[:w].ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
