"""One rlkit run of the reference work; prints one `BENCH_JSON` line of per-step measurements.

    .venv/bin/python -m benchmarks.rlkit_grpo --size 1m --steps 10 --warmup 1 --threads 2 --ranks 1 --backend ray
    .venv/bin/python -m benchmarks.rlkit_grpo --size smollm2 --steps 2 --backend local   # the realistic workload

`--size smollm2` runs the realistic workload of `benchmarks.realistic` instead (`run_real`: its config is
`realistic.rlkit_config`, padding from the actor's own micro-batch plan); what follows is the reference work.

The same saved folder and prompt file as the TRL side (`benchmarks.reference_work`), the
same step: 8 prompts x 8 samples, 16 new tokens, temperature 1, GRPO (k3 KL in the loss,
beta 0.04, token-mean loss, clip 0.2, group-std advantages), ONE optimizer step per RL
step over the whole batch in one micro-batch (as TRL's per_device_train_batch_size=64),
AdamW lr 1e-4, grad clip 1.0.

Threads: the run gets `--threads` cores in all (default 2, what TRL gets); each of the
`--ranks` workers runs `threads // ranks` torch threads (`cluster.threads_per_worker`).
Ray would otherwise give every actor OMP_NUM_THREADS=1, i.e. half the machine.

How the stages are timed:
- step, generate, learn: `time/step`, `time/generate`, `time/learn` of the stats dict that
  `Session.step()` returns (STAT_KEYS);
- ref / old log-probs: the driver's wall time around `Session.compute` when it computes
  "ref_logprobs" (GRPO's prepare asks for scores and reference log-probs in one call; the rule
  scoring on the driver overlaps the worker call), and around `Session.compute_ref_logprobs` /
  `compute_old_logprobs` where those are called (all wrapped on the instance; dispatch and gather
  included). With one update per step the config sets `actor.skip_old_logprobs`, so, like TRL,
  rlkit reuses the policy forward's log-probs: no "old" forward runs;
- weight sync: `time/sync` when the Session reports it, else 0 (the hf engine generates
  from the actor's own parameters, unsharded in place: its cost is inside generate);
- tokens: real prompt and generated tokens of `Session.last_batch` (masks summed).

Equal work: the run fails if a step reports no learn time, `actor/skipped` != 0 or a number
of optimizer steps other than 1, so a batch whose advantages are all zero (the usual case
for an untrained model) is still trained on, exactly once. The reward is the reference
work's (completion starts with the sum), handed to the Session as `reward_fn`. With
`--fixed-length` every completion is exactly 16 tokens (`rollout.min_new_tokens` = 16), as on the
TRL side with the same flag: both generate the same number of tokens.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
import time

from benchmarks.reference_work import (
    DEFAULT_WORKDIR,
    PeakRSS,
    ReferenceWork,
    StepRecord,
    Stopwatch,
    build_reference,
    check_model_shape,
    check_same_token_ids,
    emit,
    read_prompts,
    starts_with_sum,
)
from benchmarks.realistic import REAL_SIZE, add_cli_args, work_from_args

# StepRecord field -> stats key of Session.step().
STAT_KEYS: dict[str, str] = {
    "step_s": "time/step",
    "generate_s": "time/generate",
    "learn_s": "time/learn",
    "reward_mean": "reward/mean",
}


def make_config(work: ReferenceWork, model_dir: str, prompts_path: str, *, ranks: int, backend: str, threads: int,
                run_dir: str):
    """The rlkit Config of the reference work (one place, so the equal-work settings are visible)."""
    from rlkit.config import Config

    if threads % ranks:
        raise ValueError(f"--threads {threads} must be a multiple of --ranks {ranks}: every worker gets the same share")
    return Config.preset(
        "arithmetic-1m",
        model={"path": str(model_dir), "dtype": "float32"},
        data={"source": str(prompts_path), "train_size": work.num_prompts, "eval_size": 0, "max_prompt_len": 16,
              "use_chat_template": False, "seed": work.seed},
        rollout={"engine": "hf", "prompts_per_step": work.prompts_per_step, "n": work.samples_per_prompt,
                 "temperature": work.temperature, "top_p": 1.0, "top_k": 0, "max_new_tokens": work.max_new_tokens,
                 "seed": work.seed, "min_new_tokens": work.max_new_tokens if work.fixed_length else 0},
        actor={"lr": work.lr, "weight_decay": 0.0, "warmup_steps": 0, "lr_schedule": "constant", "grad_clip": 1.0,
               "mini_batch_size": work.batch_size, "micro_batch_size": work.batch_size // ranks, "ppo_epochs": 1,
               "entropy_coef": 0.0, "gradient_checkpointing": False, "offload": False,
               # one on-policy update per step: the loss takes its own log-probs as the old ones, as TRL does
               "skip_old_logprobs": True},
        algo={"name": "grpo", "kl_coef": work.beta, "kl_kind": "k3", "kl_in_reward": False, "loss_agg": "token-mean",
              "clip_low": 0.2, "clip_high": 0.2, "norm_adv_by_std": True, "dynamic_sampling": False},
        cluster={"backend": backend, "nodes": 1, "devices_per_node": ranks, "threads_per_worker": threads // ranks,
                 "device": "cpu"},
        logging={"run_dir": run_dir, "wandb": False, "dashboard": False, "eval_every": 0, "save_every": 0},
        seed=work.seed,
    )


def step_record(index: int, stats: dict, laps: dict[str, float], prompt_tokens: int, gen_tokens: int) -> StepRecord:
    """A StepRecord from one `Session.step()` stats dict and the stopwatch laps of its prepare calls.

    Raises if the step did not do exactly one update (unequal work with TRL)."""
    values = {name: (float(stats[key]) if stats.get(key) is not None else None) for name, key in STAT_KEYS.items()}
    if values["step_s"] is None:
        raise KeyError(f"Session.step() stats have no {STAT_KEYS['step_s']!r}; keys: {sorted(stats)}")
    if not values["learn_s"]:
        raise RuntimeError(f"step {index}: no {STAT_KEYS['learn_s']!r} in the stats: the update was skipped or "
                           "not timed, so rlkit did less work than TRL")
    if stats.get("actor/skipped", 0) != 0 or stats.get("actor/optimizer_steps", 1) != 1:
        raise RuntimeError(f"step {index}: actor/skipped = {stats.get('actor/skipped')}, actor/optimizer_steps = "
                           f"{stats.get('actor/optimizer_steps')}; the reference work is exactly one update per step")
    gen_s = values["generate_s"]
    return StepRecord(
        step=index, ref_s=laps.get("ref"), old_s=laps.get("old"),
        sync_s=float(stats.get("time/sync", 0.0)),  # hf engine: generation reads the actor's parameters in place
        prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
        gen_tokens_per_s=gen_tokens / gen_s if gen_s else None,
        extra={"prepare_s": stats.get("time/prepare"), **{k: v for k, v in stats.items() if k.startswith("memory/")}},
        **values,
    )


def _time_prepare_calls(session, watch: Stopwatch) -> None:
    """Wrap the session's reference/old log-prob calls (instance attributes) with stopwatches."""
    for method, lap in (("compute_ref_logprobs", "ref"), ("compute_old_logprobs", "old")):
        inner = getattr(session, method)

        def timed(batch, *args, _inner=inner, _lap=lap, **kwargs):
            with watch(_lap):
                return _inner(batch, *args, **kwargs)

        setattr(session, method, timed)

    # GRPO's prepare now asks `Session.compute(batch, "scores", "ref_logprobs", ...)` for everything at once
    # (the worker calls in flight while the driver scores): its wall time is the "ref" lap when it computes
    # the reference log-probs (the rule scoring overlaps it), else "old" when it computes those
    inner_compute = session.compute

    def timed_compute(batch, *fields, **kwargs):
        lap = "ref" if "ref_logprobs" in fields else "old" if "old_logprobs" in fields else "compute"
        with watch(lap):
            return inner_compute(batch, *fields, **kwargs)

    session.compute = timed_compute


def _session_kwargs(session_cls) -> dict:
    """Hand the reference reward to the Session when it takes one (else its built-in rule reward is used)."""
    params = inspect.signature(session_cls).parameters
    for name in ("reward_fn", "reward"):
        if name in params:
            # rlkit reward rules take (response_text, ground_truth, eos_seen)
            return {name: lambda text, truth, eos: starts_with_sum(text, truth)}
    return {}


def run(work: ReferenceWork, *, threads: int, ranks: int, backend: str, workdir: str, init: str | None = None) -> dict:
    """Run the Session on `work` and return (and print) the measurement record."""
    import torch

    torch.set_num_threads(threads if backend == "local" else 1)  # under Ray the driver only orchestrates
    import rlkit

    session_cls = rlkit.Session
    if not callable(getattr(session_cls, "step", None)):
        sys.exit("benchmarks.rlkit_grpo: this rlkit.Session has no step(); the benchmark needs "
                 "`rlkit.Session(cfg).step()` returning a stats dict")

    from transformers import AutoModelForCausalLM

    model_dir, prompts_path = build_reference(work, workdir)
    model_dir = init or model_dir
    rows = read_prompts(prompts_path)
    check_same_token_ids(model_dir, rows)
    num_params = check_model_shape(AutoModelForCausalLM.from_pretrained(model_dir), work.size)
    run_dir = tempfile.mkdtemp(prefix="rlkit-bench-run-", dir=workdir)
    cfg = make_config(work, model_dir, prompts_path, ranks=ranks, backend=backend, threads=threads, run_dir=run_dir)

    records: list[StepRecord] = []
    watch = Stopwatch()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        session = session_cls(cfg, **_session_kwargs(session_cls))
        startup_s = time.perf_counter() - t0
        _time_prepare_calls(session, watch)
        try:
            for i in range(work.total_steps):
                watch.take()
                stats = session.step()
                laps = watch.take()
                if i < work.warmup_steps:
                    continue
                batch = session.last_batch
                records.append(step_record(i - work.warmup_steps, stats, laps,
                                           int(batch.prompt_mask.sum()), int(batch.response_mask.sum())))
        finally:
            session.close()
        total_s = time.perf_counter() - t0
    return emit(
        "rlkit", work, records,
        num_params=num_params, threads=threads, ranks=ranks, backend=backend, total_s=total_s, startup_s=startup_s,
        peak_rss_self_mb=PeakRSS.self_peak_bytes() / 2**20, peak_rss_tree_mb=rss.tree_peak_bytes / 2**20,
        versions={"rlkit": rlkit.__version__, "torch": torch.__version__},
    )


def run_real(work, *, threads: int, ranks: int, backend: str, workdir: str) -> dict:
    """Run the Session on the realistic workload (`benchmarks.realistic.RealWork`) and return (and print) the
    record; raises if a step's prompts are not the ones `realistic.step_prompts` gave the TRL side."""
    import torch

    torch.set_num_threads(threads if backend == "local" else 1)
    from transformers import AutoConfig, AutoModelForCausalLM

    import rlkit
    from benchmarks import realistic

    model_dir = realistic.model_dir(work)
    run_dir = tempfile.mkdtemp(prefix="rlkit-bench-run-", dir=workdir)
    cfg = realistic.rlkit_config(work, model_dir, ranks=ranks, backend=backend, threads=threads, run_dir=run_dir)
    expected = [realistic.prompts_digest([r["text"] for r in step]) for step in
                realistic.step_prompts(cfg, work.total_steps)]
    with torch.device("meta"):  # the parameter count without a second resident copy of the model
        num_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
                         .parameters())
    a = cfg.actor
    records: list[StepRecord] = []
    watch = Stopwatch()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        session = rlkit.Session(cfg, reward_fn=realistic.reward)
        startup_s = time.perf_counter() - t0
        _time_prepare_calls(session, watch)
        try:
            for i in range(work.total_steps):
                watch.take()
                stats = session.step()
                laps = watch.take()
                batch = session.last_batch
                digest = realistic.prompts_digest(list(batch.prompt_text))
                if digest != expected[i]:
                    raise RuntimeError(f"step {i}: rlkit trained on other prompts than the TRL side is given "
                                       f"(digest {digest} != {expected[i]}): PromptStream's order changed?")
                if i < work.warmup_steps:
                    continue
                rec = step_record(i - work.warmup_steps, stats, laps, int(batch.prompt_mask.sum()),
                                  int(batch.response_mask.sum()))
                if ranks == 1:  # the plan of one rank; with several, rows are dealt to ranks first
                    rec.extra.update(realistic.padding_stats(realistic.rlkit_micro_batch_shapes(
                        batch, a.micro_batch_size, a.max_tokens_per_micro_batch, a.pack_sequences)))
                rec.extra["prompts_digest"] = digest
                records.append(rec)
        finally:
            session.close()
        total_s = time.perf_counter() - t0
    settings = {"dtype": cfg.model.dtype, "max_tokens_per_micro_batch": a.max_tokens_per_micro_batch,
                "micro_batch_size": a.micro_batch_size, "pack_sequences": a.pack_sequences,
                "gradient_checkpointing": a.gradient_checkpointing, "logits_chunk_size": a.logits_chunk_size,
                "kl_coef": cfg.algo.kl_coef, "engine": cfg.rollout.engine, "gather_weights": cfg.rollout.gather_weights}
    return emit(
        "rlkit", work, records,
        num_params=num_params, threads=threads, ranks=ranks, backend=backend, total_s=total_s, startup_s=startup_s,
        settings=settings, peak_rss_self_mb=PeakRSS.self_peak_bytes() / 2**20,
        peak_rss_tree_mb=rss.tree_peak_bytes / 2**20,
        versions={"rlkit": rlkit.__version__, "torch": torch.__version__},
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1m", choices=["1m", "9m", REAL_SIZE],
                   help=f"reference work (1m, 9m) or the realistic workload ({REAL_SIZE}: benchmarks.realistic)")
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--fixed-length", action="store_true",
                   help="every completion exactly 16 tokens (EOS suppressed until then): equal generated tokens on both sides")
    p.add_argument("--threads", type=int, default=2, help="torch threads in all, split evenly over the ranks")
    p.add_argument("--ranks", type=int, default=1, help="data-parallel workers (FSDP ranks)")
    p.add_argument("--backend", default="ray", choices=["ray", "local"])
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="where the model folder and prompt file are kept")
    p.add_argument("--init", default=None, help="start from this saved model folder (same shape and tokenizer, e.g. an SFT policy) instead of the reference init")
    add_cli_args(p)
    a = p.parse_args(argv)
    if a.backend == "local" and a.ranks != 1:
        p.error("--backend local runs one rank: use --ranks 1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster (see /work/shared/NOTES.md)
    if a.size == REAL_SIZE:
        run_real(work_from_args(a), threads=a.threads, ranks=a.ranks, backend=a.backend, workdir=a.workdir)
        return
    work = ReferenceWork(size=a.size, prompts_per_step=a.prompts_per_step, steps=a.steps, warmup_steps=a.warmup,
                         fixed_length=a.fixed_length)
    run(work, threads=a.threads, ranks=a.ranks, backend=a.backend, workdir=a.workdir, init=a.init)


if __name__ == "__main__":
    main()
