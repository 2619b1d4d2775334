"""The realistic workload (issue 16, point 5): the real model on the real-model task, natural answer lengths.

    .venv/bin/python -m benchmarks.harness compare --size smollm2 --arms rlkit:local:1,rlkit,trl --rounds 1 --steps 2

Work of one RL step, the same on both sides (`RealWork`):
- model: SmolLM2-135M-Instruct (`rlkit.data.gguf.prepare_smollm2`, fp32 weights), or `--model DIR`;
- task: `chat_sums` ("What is 17 + 25? Reply with just the number." as a user turn of the model's chat
  template), 8 prompts x 4 samples, temperature 1, top-p 1, no top-k, every sample ending at EOS or after
  at most 128 new tokens (natural lengths: most replies are short, a few ramble to the limit);
- reward: rlkit's answer extraction (`rlkit.data.chat_sums.chat_sums_reward`: boxed / "the answer is" /
  last number), handed to TRL as its reward function;
- GRPO without KL (beta 0: no reference model on either side), group-std advantages, token-mean loss
  (TRL's default "dapo"), clip 0.2, ONE optimizer step per RL step over the whole batch, AdamW at the
  preset's lr 3e-6, grad clip 1.0.

Same prompts: rlkit's `PromptStream` (the one a Session builds from the config) is asked here for the
prompts of every step; TRL gets exactly those rendered texts (the chat template applied once, by the
tokenizer's own template) in that order (`shuffle_dataset=False`), and `check_prompt_ids` checks that
TRL's tokenization gives rlkit's prompt ids. Every step record carries a digest of its prompts, which
the harness compares across arms.

Because lengths are natural, the two samplers' draws give each side a different number of generated
tokens per step: compare `gen tokens/s` and `s per gen token` besides the step time.

Padding fraction (`padding_stats`): over the policy update's micro-batches, exactly as each trainer
shapes them (rlkit: its token-budget plan and per-micro-batch trimming; TRL: the whole generation batch
left/right padded, split into `per_device_train_batch_size` rows), the share of computed token
positions (rows x width of prompt + response) that are padding.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

REAL_SIZE = "smollm2"


@dataclass(frozen=True)
class RealWork:
    """The realistic workload (defaults: issue 16, point 5)."""

    model: str = ""
    """Model folder; "" = SmolLM2-135M-Instruct prepared by `rlkit.data.gguf.prepare_smollm2`."""
    prompts_per_step: int = 8
    """Prompts per RL step."""
    samples_per_prompt: int = 4
    """Samples per prompt (the GRPO group size)."""
    max_new_tokens: int = 128
    """Longest completion; completions end at EOS before that (natural lengths)."""
    temperature: float = 1.0
    """Sampling temperature (top-p 1, no top-k)."""
    beta: float = 0.0
    """KL weight: 0, so neither side builds a reference model."""
    lr: float = 3e-6
    """AdamW learning rate (the `chat-sums-smollm2` preset's)."""
    steps: int = 2
    """Measured RL steps."""
    warmup_steps: int = 1
    """Steps run first and not measured."""
    seed: int = 0
    """Seed of the prompt order and the samplers."""
    token_budget: int = 1024
    """rlkit's `actor.max_tokens_per_micro_batch` (its fastest documented CPU setting: BENCHMARKS.md,
    "Token budgets, packing and LoRA"); 0 = `micro_batch_size` rows."""
    micro_batch_size: int = 8
    """Rows per micro-batch: rlkit's rows when the budget is 0, TRL's `per_device_train_batch_size`
    (with `gradient_accumulation_steps` = batch / this, still one optimizer step); 0 = the whole batch."""
    dtype: str = "float32"
    """"float32" or "bfloat16": rlkit's `model.dtype`; TRL's `bf16` flag (autocast over fp32 weights)."""
    fixed_length: bool = False
    """Never set here (natural lengths); present so the harness can treat both workloads alike."""

    def __post_init__(self) -> None:
        for name in ("prompts_per_step", "samples_per_prompt", "max_new_tokens", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"RealWork.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.token_budget < 0 or self.micro_batch_size < 0:
            raise ValueError("RealWork: warmup_steps, token_budget and micro_batch_size must be >= 0")
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise ValueError(f"RealWork: micro_batch_size {self.micro_batch_size} must divide the batch "
                             f"{self.batch_size} (TRL accumulates whole micro-batches into one step)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"RealWork.dtype must be float32 or bfloat16, got {self.dtype!r}")

    @property
    def size(self) -> str:
        """The harness's name of this workload."""
        return REAL_SIZE

    @property
    def batch_size(self) -> int:
        """Samples per step."""
        return self.prompts_per_step * self.samples_per_prompt

    @property
    def total_steps(self) -> int:
        """Warm-up plus measured steps."""
        return self.warmup_steps + self.steps

    @property
    def rows_per_micro_batch(self) -> int:
        """`micro_batch_size`, or the whole batch when it is 0."""
        return self.micro_batch_size or self.batch_size

    def cli_args(self) -> list[str]:
        """The side scripts' flags of this workload (beyond --size/--steps/--warmup/--prompts-per-step)."""
        args = ["--samples", str(self.samples_per_prompt), "--max-new-tokens", str(self.max_new_tokens),
                "--token-budget", str(self.token_budget), "--micro-batch", str(self.micro_batch_size),
                "--dtype", self.dtype]
        return args + (["--model", self.model] if self.model else [])


def add_cli_args(p) -> None:
    """The `RealWork` flags of the side scripts (used with `--size smollm2`)."""
    d = RealWork()
    p.add_argument("--samples", type=int, default=d.samples_per_prompt, help="smollm2: samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="smollm2: longest completion")
    p.add_argument("--token-budget", type=int, default=d.token_budget,
                   help="smollm2: rlkit's actor.max_tokens_per_micro_batch (0 = rows)")
    p.add_argument("--micro-batch", type=int, default=d.micro_batch_size,
                   help="smollm2: rows per micro-batch (TRL per_device_train_batch_size; 0 = whole batch)")
    p.add_argument("--dtype", default=d.dtype, choices=["float32", "bfloat16"], help="smollm2: compute dtype")
    p.add_argument("--model", default="", help="smollm2: model folder (default: the prepared SmolLM2-135M-Instruct)")


def work_from_args(a) -> RealWork:
    """The `RealWork` of parsed side-script flags."""
    return RealWork(model=a.model, prompts_per_step=a.prompts_per_step, samples_per_prompt=a.samples,
                    max_new_tokens=a.max_new_tokens, steps=a.steps, warmup_steps=a.warmup,
                    token_budget=a.token_budget, micro_batch_size=a.micro_batch, dtype=a.dtype)


def model_dir(work: RealWork) -> str:
    """The model folder both sides load."""
    if work.model:
        return str(Path(work.model).expanduser())
    from rlkit.data.gguf import prepare_smollm2

    return str(prepare_smollm2())


def rlkit_config(work: RealWork, model: str, *, ranks: int, backend: str, threads: int, run_dir: str):
    """The rlkit Config of the realistic workload: the `chat-sums-smollm2` preset at the workload's sizes."""
    from rlkit.config import Config

    if threads % ranks:
        raise ValueError(f"--threads {threads} must be a multiple of --ranks {ranks}")
    return Config.preset(
        "chat-sums-smollm2",
        model={"path": model, "dtype": work.dtype},
        # 256: a limit, not a padding width (the char tokenizer of the smoke test spells the template out)
        data={"max_prompt_len": 256, "seed": work.seed},
        rollout={"engine": "hf", "prompts_per_step": work.prompts_per_step, "n": work.samples_per_prompt,
                 "temperature": work.temperature, "top_p": 1.0, "top_k": 0, "max_new_tokens": work.max_new_tokens,
                 "min_new_tokens": 0, "seed": work.seed,
                 # bf16 on one CPU rank: gather the bf16 weights once per generate call instead of casting each
                 # layer at every token (BENCHMARKS "Memory per role and bf16": slower than fp32 otherwise)
                 "gather_weights": "always" if work.dtype == "bfloat16" else "auto"},
        actor={"lr": work.lr, "weight_decay": 0.0, "warmup_steps": 0, "lr_schedule": "constant", "grad_clip": 1.0,
               "mini_batch_size": work.batch_size, "micro_batch_size": work.rows_per_micro_batch // ranks,
               "max_tokens_per_micro_batch": work.token_budget, "pack_sequences": False, "ppo_epochs": 1,
               "entropy_coef": 0.0, "gradient_checkpointing": False, "offload": False, "skip_old_logprobs": True},
        algo={"name": "grpo", "kl_coef": work.beta, "loss_agg": "token-mean", "clip_low": 0.2, "clip_high": 0.2,
              "norm_adv_by_std": True, "dynamic_sampling": False},
        cluster={"backend": backend, "nodes": 1, "devices_per_node": ranks, "threads_per_worker": threads // ranks,
                 "device": "cpu"},
        logging={"run_dir": run_dir, "wandb": False, "dashboard": False, "eval_every": 0, "save_every": 0},
        seed=work.seed,
    )


def step_prompts(cfg, steps: int) -> list[list[dict]]:
    """The prompts rlkit's Session will train on at each of `steps` steps, from the same `PromptStream`:
    per step, [{"text": rendered prompt, "ground_truth", "ids": prompt token ids}] (one per prompt)."""
    from rlkit.data.stream import PromptStream, load_driver_tokenizer

    stream = PromptStream(cfg, load_driver_tokenizer(cfg.model.path, cfg.model.tokenizer_path))
    out = []
    for _ in range(steps):
        b = stream.next_train()
        out.append([{"text": t, "ground_truth": str(g), "ids": ids[m.bool()].tolist()}
                    for t, g, ids, m in zip(b.prompt_text, b.ground_truth, b.prompt_ids, b.prompt_mask)])
    return out


def check_prompt_ids(tokenizer, steps: list[list[dict]]) -> None:
    """Raise unless TRL's tokenization of text prompts (`processing_class(text=prompts)`) gives rlkit's ids."""
    for k, rows in enumerate(steps):
        got = tokenizer(text=[r["text"] for r in rows])["input_ids"]
        for r, ids in zip(rows, got):
            if list(ids) != r["ids"]:
                raise AssertionError(f"step {k}: prompt {r['text']!r:.80}: TRL's ids {list(ids)[:12]}... differ "
                                     f"from rlkit's {r['ids'][:12]}...")


def prompts_digest(texts: list[str]) -> str:
    """A short digest of one step's prompts in order (each prompt once)."""
    distinct = list(dict.fromkeys(texts))
    return hashlib.sha1("\x00".join(distinct).encode()).hexdigest()[:12]


def reward(text: str, ground_truth: str, eos_seen: bool) -> float:
    """rlkit's answer-extraction reward of the task, used by both sides."""
    from rlkit.data.chat_sums import chat_sums_reward

    return float(chat_sums_reward(text, ground_truth, eos_seen))


def padding_stats(shapes: list[tuple[int, int, int]]) -> dict[str, float]:
    """{"padding_frac", "computed_tokens", "real_tokens", "micro_batches"} of micro-batches given as
    (rows, width, real tokens): computed positions are rows x width (a packed micro-batch: rows 1, width =
    its real tokens)."""
    computed = sum(r * w for r, w, _ in shapes)
    real = sum(t for _, _, t in shapes)
    return {"padding_frac": (computed - real) / computed if computed else 0.0, "computed_tokens": computed,
            "real_tokens": real, "micro_batches": len(shapes)}


def rlkit_micro_batch_shapes(batch, rows: int, budget: int, packed: bool) -> list[tuple[int, int, int]]:
    """(rows, width, real tokens) of each micro-batch of one rank's policy update over `batch`, planned as
    the actor plans it (`plan_token_micro_batches`, or `rows`-row slices) and trimmed as it trims them
    (`sequence_inputs`); one rank only (several ranks deal rows first)."""
    from rlkit.workers.batching import chunks, sequence_inputs
    from rlkit.workers.packing import plan_token_micro_batches, row_token_counts

    if budget > 0:
        parts = [batch.select(idx) for idx in plan_token_micro_batches(row_token_counts(batch).tolist(), budget,
                                                                       packed=packed)]
    else:
        parts = list(chunks(batch, rows))
    shapes = []
    for mb in parts:
        real = int(row_token_counts(mb).sum())
        ids = sequence_inputs(mb)[0]  # (b, P' + T')
        shapes.append((1, real, real) if packed else (ids.shape[0], ids.shape[1], real))
    return shapes


def trl_micro_batch_shape(inputs: dict) -> tuple[int, int, int]:
    """(rows, width, real tokens) of the micro-batch TRL's `_compute_loss` receives: prompt (left-padded)
    and completion (right-padded) concatenated, as TRL feeds them to the model."""
    rows = int(inputs["prompt_ids"].shape[0])
    width = int(inputs["prompt_ids"].shape[1] + inputs["completion_ids"].shape[1])
    real = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
    return rows, width, real


def trl_config_kwargs(work: RealWork, workdir: str) -> dict:
    """GRPOConfig arguments of the realistic workload (one place, next to rlkit's config)."""
    micro = work.rows_per_micro_batch
    return dict(
        output_dir=os.path.join(workdir, f"trl-out-{os.getpid()}"), use_cpu=True,
        bf16=work.dtype == "bfloat16", fp16=False,
        gradient_checkpointing=False,  # TRL's default is on: it recomputes activations (slower, less memory)
        beta=work.beta, num_generations=work.samples_per_prompt,
        per_device_train_batch_size=micro, gradient_accumulation_steps=work.batch_size // micro,
        max_completion_length=work.max_new_tokens, num_iterations=1, use_vllm=False,
        temperature=work.temperature, top_p=1.0, top_k=0, learning_rate=work.lr, lr_scheduler_type="constant",
        optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0, epsilon=0.2, loss_type="dapo",
        scale_rewards="group", max_steps=work.total_steps, shuffle_dataset=False, seed=work.seed,
        logging_steps=10_000, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
    )
