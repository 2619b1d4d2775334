"""One TRL `GRPOTrainer` run of the reference work; prints one `BENCH_JSON` line of per-step measurements.

    .venv/bin/python -m benchmarks.trl_grpo --size 1m --steps 10 --warmup 1 --threads 2
    .venv/bin/python -m benchmarks.trl_grpo --size smollm2 --steps 2   # the realistic workload (`run_real`)

`--size smollm2` runs the realistic workload of `benchmarks.realistic` instead (its GRPOConfig is
`realistic.trl_config_kwargs`; `--dtype bfloat16` sets `bf16=True`); what follows is the reference work.

TRL is the peer, configured as the issue says: CPU (`use_cpu=True`), fp32 (`bf16=False`;
TRL's default is bf16), `gradient_checkpointing=False` (TRL's default is on), beta 0.04,
8 generations per prompt, `per_device_train_batch_size` = the whole batch (one update per
step), `max_completion_length=16`, `num_iterations=1`, no vLLM, AdamW lr 1e-4.
`--fixed-length` adds `generation_kwargs={"min_new_tokens": 16}`: every completion is 16 tokens.

How the stages are timed (TRL exposes only whole-step numbers):
- step: `on_step_begin` -> `on_step_end` of a TrainerCallback (generation, scoring,
  reference forward, policy forward/backward, clipping and the optimizer step; not the
  dataloader fetch nor logging, which is switched off);
- generate: a wrapper around `GRPOTrainer._generate_single_turn` (the `model.generate`
  call plus TRL's EOS masking and the conversion to lists);
- ref: a wrapper around `_get_per_token_logps_and_entropies` when it is called with the
  reference model;
- old: 0. With num_iterations=1 and one optimizer step per generation TRL does not run an
  "old" forward at all: it uses the current log-probs, detached, as the old ones;
- learn: step minus TRL's whole `_prepare_inputs` (generation + rewards + ref forward +
  advantages), i.e. the policy forward+backward, gradient clipping and AdamW step;
- sync: 0. Generation runs on the trained module itself; there is nothing to copy.
"""

from __future__ import annotations

import argparse
import os
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


def _timed_trainer_class(watch: Stopwatch, counts: dict):
    """GRPOTrainer with stopwatches around the stages and the shapes of the update's micro-batches (behaviour
    unchanged): `counts` gets prompt/generated tokens and `micro_batches` [(rows, width, real tokens)]."""
    from benchmarks.realistic import trl_micro_batch_shape
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            with watch("generate"):
                completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            counts["prompt_tokens"] += sum(len(p) for p in prompt_ids)
            counts["gen_tokens"] += sum(len(c) for c in completion_ids)
            return completion_ids, logprobs

        def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
            if model is self.ref_model:
                with watch("ref"):
                    return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
            return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

        def _prepare_inputs(self, generation_batch):
            with watch("prepare"):
                return super()._prepare_inputs(generation_batch)

        def _compute_loss(self, model, inputs):
            counts["micro_batches"].append(trl_micro_batch_shape(inputs))
            return super()._compute_loss(model, inputs)

    return TimedGRPOTrainer


def _train(work, model, tokenizer, dataset, reward_fn, args, rewards: list[float], digests: list[str]) -> tuple:
    """Train TRL with the timing callbacks -> (StepRecords of the measured steps, total seconds, PeakRSS).

    `reward_fn` appends each step's mean reward to `rewards` (and its prompts' digest to `digests`)."""
    from transformers import TrainerCallback

    from benchmarks.realistic import padding_stats

    watch = Stopwatch()
    counts: dict = {"prompt_tokens": 0, "gen_tokens": 0, "micro_batches": []}
    records: list[StepRecord] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            watch.take()
            counts.update(prompt_tokens=0, gen_tokens=0, micro_batches=[])
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = time.perf_counter() - self.t0
            laps = watch.take()
            index = state.global_step - 1 - work.warmup_steps
            if index < 0:
                return  # warm-up step: not measured
            gen_s = laps.get("generate")
            records.append(StepRecord(
                step=index, step_s=step_s, generate_s=gen_s, ref_s=laps.get("ref"), old_s=0.0,
                learn_s=step_s - laps.get("prepare", 0.0), sync_s=0.0,
                prompt_tokens=counts["prompt_tokens"], gen_tokens=counts["gen_tokens"],
                gen_tokens_per_s=counts["gen_tokens"] / gen_s if gen_s else None,
                reward_mean=rewards[-1] if rewards else None,
                extra={"prepare_s": laps.get("prepare"), **padding_stats(counts["micro_batches"]),
                       **({"prompts_digest": digests[-1]} if digests else {})},
            ))

    trainer = _timed_trainer_class(watch, counts)(
        model=model, reward_funcs=[reward_fn], args=args, train_dataset=dataset, processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        trainer.train()
        total_s = time.perf_counter() - t0
    if len(records) != work.steps:
        raise RuntimeError(f"TRL ran {len(records)} measured steps, expected {work.steps}")
    return records, total_s, rss


def _versions() -> dict:
    import torch
    import transformers
    import trl

    return {"trl": trl.__version__, "transformers": transformers.__version__, "torch": torch.__version__}


def run(work: ReferenceWork, threads: int, workdir: str, init: str | None = None) -> dict:
    """Train TRL on `work` and return (and print) the measurement record."""
    import torch

    torch.set_num_threads(threads)  # deliberate: TRL would otherwise take every core the host shows
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    model_dir, prompts_path = build_reference(work, workdir)
    model_dir = init or model_dir
    rows = read_prompts(prompts_path)
    tokenizer = check_same_token_ids(model_dir, rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    num_params = check_model_shape(model, work.size)
    rewards: list[float] = []

    def reward(prompts, completions, ground_truth, **kwargs) -> list[float]:
        values = [starts_with_sum(c, g) for c, g in zip(completions, ground_truth)]
        rewards.append(sum(values) / len(values))
        return values

    args = GRPOConfig(
        output_dir=os.path.join(workdir, f"trl-out-{os.getpid()}"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        beta=work.beta,
        num_generations=work.samples_per_prompt,
        per_device_train_batch_size=work.batch_size,
        gradient_accumulation_steps=1,
        max_completion_length=work.max_new_tokens,
        generation_kwargs={"min_new_tokens": work.max_new_tokens} if work.fixed_length else None,
        num_iterations=1,
        use_vllm=False,
        temperature=work.temperature,
        learning_rate=work.lr,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        max_steps=work.total_steps,
        shuffle_dataset=False,  # the prompt order of the file, as the rlkit side reads it
        seed=work.seed,
        logging_steps=10_000,  # no logging inside the timed loop
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    records, total_s, rss = _train(work, model, tokenizer, datasets.Dataset.from_list(rows), reward, args,
                                   rewards, [])
    return emit(
        "trl", work, records,
        num_params=num_params, threads=threads, total_s=total_s,
        peak_rss_self_mb=PeakRSS.self_peak_bytes() / 2**20, peak_rss_tree_mb=rss.tree_peak_bytes / 2**20,
        versions=_versions(),
    )


def run_real(work, threads: int, workdir: str) -> dict:
    """Train TRL on the realistic workload (`benchmarks.realistic.RealWork`): the prompts rlkit's stream
    gives, in its order, as rendered texts; rlkit's extraction reward."""
    import torch

    torch.set_num_threads(threads)
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from benchmarks import realistic

    model_dir = realistic.model_dir(work)
    cfg = realistic.rlkit_config(work, model_dir, ranks=1, backend="local", threads=threads, run_dir=workdir)
    steps = realistic.step_prompts(cfg, work.total_steps)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    realistic.check_prompt_ids(tokenizer, steps)
    rows = [{"prompt": r["text"], "ground_truth": r["ground_truth"]} for step in steps for r in step]
    # fp32 weights either way: TRL's bf16 flag is autocast (the Trainer's mixed precision), as a user gets it
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    num_params = sum(p.numel() for p in model.parameters())
    eos = tokenizer.eos_token_id
    rewards: list[float] = []
    digests: list[str] = []

    def reward(prompts, completions, ground_truth, completion_ids=None, **kwargs) -> list[float]:
        ends = [bool(ids) and ids[-1] == eos for ids in completion_ids] if completion_ids else [True] * len(prompts)
        values = [realistic.reward(c, g, e) for c, g, e in zip(completions, ground_truth, ends)]
        rewards.append(sum(values) / len(values))
        digests.append(realistic.prompts_digest(list(prompts)))
        return values

    kwargs = realistic.trl_config_kwargs(work, workdir)
    records, total_s, rss = _train(work, model, tokenizer, datasets.Dataset.from_list(rows), reward,
                                   GRPOConfig(**kwargs), rewards, digests)
    settings = {k: kwargs[k] for k in ("bf16", "gradient_checkpointing", "per_device_train_batch_size",
                                       "gradient_accumulation_steps", "loss_type", "beta")}
    return emit(
        "trl", work, records,
        num_params=num_params, threads=threads, total_s=total_s, settings=settings,
        peak_rss_self_mb=PeakRSS.self_peak_bytes() / 2**20, peak_rss_tree_mb=rss.tree_peak_bytes / 2**20,
        versions=_versions(),
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
    p.add_argument("--threads", type=int, default=2, help="torch threads of the TRL process (2 = all cores here)")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="where the model folder and prompt file are kept")
    p.add_argument("--init", default=None, help="start from this saved model folder (same shape and tokenizer, e.g. an SFT policy) instead of the reference init")
    add_cli_args(p)
    a = p.parse_args(argv)
    if a.size == REAL_SIZE:
        run_real(work_from_args(a), a.threads, a.workdir)
        return
    work = ReferenceWork(size=a.size, prompts_per_step=a.prompts_per_step, steps=a.steps, warmup_steps=a.warmup,
                         fixed_length=a.fixed_length)
    run(work, a.threads, a.workdir, init=a.init)


if __name__ == "__main__":
    main()
