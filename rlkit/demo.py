"""`rlkit demo`: the whole pipeline on the arithmetic task, in a few minutes of CPU.

1. SFT warm-up of the tiny model (`rlkit.workers.sft.run_sft`, cached under
   `out_dir/sft`: the second run skips it);
2. a `Session` on the SFT policy, greedy eval accuracy before RL;
3. `s.train(steps)` with the configured algorithm (GRPO by default), progress bar;
4. eval accuracy after, a table of eval samples, and where the run's stats and
   plots were written.

`sample_and_score` is the smallest look at the pieces without any RL: sample
answers for held-out prompts with plain transformers `generate` and score them.
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
class SampleResult:
    """What `sample_and_score` measured."""

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


def sample_and_score(
    cfg: Config | None = None,
    *,
    out_dir: str | Path = "runs/demo",
    num_prompts: int = 64,
    show: int = 16,
    print_fn: Callable[[str], None] | None = print,
) -> SampleResult:
    """Sample and score `num_prompts` eval prompts; print `show` rows and the accuracy via `print_fn`.

    cfg: defaults to `Config.preset("arithmetic-tiny")`. Used fields: model.path /
      model.preset / model.tokenizer_path / model.dtype, data.* (source, keys,
      digits, operators, seed, max_prompt_len, use_chat_template), rollout.temperature /
      top_p / top_k / max_new_tokens / seed, and the global seed (tiny model init).
    out_dir: the tiny model is saved under `out_dir/model` when `model.path` is None.
    """
    start = time.perf_counter()
    cfg = cfg if cfg is not None else Config.preset("arithmetic-rl")
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
    return SampleResult(
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


@dataclass
class DemoResult:
    """What `run_demo` measured."""

    sft_accuracy: float
    """Greedy exact match of the SFT policy on the SFT eval prompts."""
    accuracy_before: float
    """Greedy eval accuracy of the Session's policy before RL."""
    accuracy_after: float
    """Greedy eval accuracy after `steps` RL steps."""
    history: list
    """Per-step stats of the RL run."""
    run_dir: str
    """The RL run's directory (config.yaml, stats.jsonl, samples.jsonl, dashboard.html)."""
    seconds: float
    """Wall time of the whole demo."""


DEMO_STEPS = 30
"""RL steps of the demo: the `arithmetic-rl` recipe gains +13 to +15 points of greedy accuracy in 30 steps (BENCHMARKS.md)."""


def demo_sft_config():
    """The SFT warm-up of the demo and of the learning tests: ~50% exact match on the tiny model in about two CPU minutes.

    Why 500 steps: RL has the most to gain from a policy that already has the right answer among its
    samples but not always as its argmax (200 steps: 14% and RL gains nothing; 1000 steps: 97%).
    """
    from rlkit.workers.sft import SFTConfig

    return SFTConfig(steps=500, batch_size=256, micro_batch_size=256, lr=3e-3, weight_decay=0.1, eval_size=128)


def run_demo(
    cfg: Config | None = None,
    *,
    out_dir: str | Path = "runs/demo",
    steps: int = DEMO_STEPS,
    num_prompts: int | None = None,
    show: int = 8,
    print_fn: Callable[[str], None] | None = print,
) -> DemoResult:
    """SFT warm-up (cached), eval, `steps` RL steps, eval; prints the accuracy before and after.

    `cfg` defaults to the `arithmetic-rl` preset; `num_prompts` to the whole eval split (`data.eval_size`).
    """
    import rlkit
    from rlkit.workers.sft import run_sft

    start = time.perf_counter()
    cfg = cfg if cfg is not None else Config.preset("arithmetic-rl")
    say = print_fn or (lambda _: None)
    out_dir = Path(out_dir)

    say("1/3 SFT warm-up (cached after the first run) ...")
    sft = run_sft(cfg, out_dir / "sft", sft=demo_sft_config(), progress=print_fn is not None)
    say(f"    SFT policy: exact match {sft.exact_match:.1%}{' (cached)' if sft.cached else ''} -> {sft.model_dir}")

    # No run_name: a timestamped folder per demo run (`make demo` twice must not reuse, and so refuse, a used run).
    run_cfg = cfg.override({"model.path": str(sft.model_dir), "logging.run_dir": str(out_dir),
                            "logging.run_name": cfg.logging.run_name})
    with rlkit.Session(run_cfg) as s:
        before = s.evaluate(num_prompts=num_prompts)["eval/accuracy"]
        say(f"2/3 {cfg.algo.name} for {steps} steps (eval accuracy before: {before:.1%}) ...")
        history = s.train(steps)
        after = s.evaluate(num_prompts=num_prompts)["eval/accuracy"]
        greedy = s.score(s.rollout(s.prompts.eval_batch(show), greedy=True))
        texts, eos_seen = decode_responses(s.tokenizer, greedy.response_ids, greedy.response_mask)
        say(format_table(list(greedy.prompt_text), texts, eos_seen.tolist(),
                         greedy.scores.tolist(), list(greedy.ground_truth)))
        html = s.monitor.write_html()
        run_dir = str(s.run_dir)
    seconds = time.perf_counter() - start
    say(f"3/3 eval accuracy: {before:.1%} -> {after:.1%} after {steps} {cfg.algo.name} steps | {seconds:.0f} s")
    say(f"    stats: {run_dir}/stats.jsonl | plots: {html}")
    return DemoResult(sft.exact_match, before, after, history, run_dir, seconds)

