"""The run configuration's schema: one dataclass per section, one docstring per field, and `Config`.

`Config` holds the derived values (properties in one marked block, never stored or written to YAML) and
`validate()`, where every check lives. Allowed values that another module owns (loss aggregation modes, KL
estimators, rollout engines, algorithm names and what each algorithm needs) are imported from that module
inside `validate()`, lazily: `import rlkit.config` must not import torch.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rlkit.config.io import (
    ConfigError, _apply, _build, _check_types, _load_yaml, _plain, _to_yaml,
)
from rlkit.config.presets import PRESETS
from rlkit.config.rl_sections import AlgoConfig, EnvConfig, RolloutConfig

__all__ = [
    "Config", "ModelConfig", "DataConfig", "RolloutConfig", "EnvConfig", "ActorConfig", "CriticConfig", "AlgoConfig",
    "ClusterConfig", "LoggingConfig", "RewardConfig",
]


# ---------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ModelConfig:
    path: str | None = None
    """Hub name or local folder of the policy (and reference) model; None builds the tiny `preset` offline."""
    preset: str = "qwen2-tiny"
    """Tiny model preset of `rlkit.data` built from a config when `path` is None (e.g. qwen2-tiny, qwen2-1m)."""
    tokenizer_path: str | None = None
    """Hub name or local folder of the tokenizer; None = the model's own (`path`, or the built-in char tokenizer)."""
    dtype: str = "auto"
    """Parameter dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32" or "bfloat16"."""
    attn_implementation: str | None = None
    """transformers attention kernel: None (library default), "eager", "sdpa" or "flash_attention_2"."""
    reward_model_path: str | None = None
    """Sequence-classification reward model (hub name or folder); None = the task's rule reward."""
    cost_model_path: str | None = None
    """Cost model for Safe-RLHF (hub name or folder); None = the task's rule cost, if any."""
    critic_path: str | None = None
    """Initial weights of the critic; None = initialise from the actor with a fresh value head."""
    trust_remote_code: bool = False
    """Allow transformers to run modelling code shipped with a hub model (only for sources you trust)."""


@dataclass(kw_only=True)
class DataConfig:
    source: str = "arithmetic"
    """Prompt source: a built-in task name ("arithmetic"), a .jsonl/.parquet file, or a `datasets` name."""
    prompt_key: str = "prompt"
    """Column holding the prompt: a string, or a chat message list `[{"role": "system"|"user"|"assistant",
    "content": str}, ...]` (verl's and TRL's conversational `prompt`). A dotted path reads into a dict column
    ("question.text" = the key `text` of the column `question`)."""
    answer_key: str = "ground_truth"
    """Column holding the reference answer given to the reward function (a dotted path reads into a dict
    column: "reward_model.ground_truth"). With the default "ground_truth" and no such column, verl's
    `reward_model.ground_truth` is used when the source has it, so a verl parquet file needs only `source`.
    Besides these two columns, a source's `data_source` (str) and `extra_info` (dict) columns, when present,
    reach every Batch row as `batch.data_source` / `batch.extra_info` (default: this `source`, and {})."""
    digits: int = 2
    """Arithmetic task: digits per operand."""
    operators: str = "+"
    """Arithmetic task: operators to draw from, as one string of characters among "+-*" (e.g. "+-")."""
    train_size: int = 4096
    """Number of training prompts (built-in tasks generate exactly this many; files are truncated to it)."""
    eval_size: int = 256
    """Number of held-out evaluation prompts (disjoint from training); 0 = no evaluation set."""
    max_prompt_len: int = 512
    """Prompts longer than this many tokens are rejected (left padding brings shorter ones to the batch max)."""
    use_chat_template: bool | str = "auto"
    """Render prompts through the tokenizer's chat template (with the generation prompt) before tokenising:
    True (a text prompt becomes one user turn), False (text is tokenised as it is; message-list prompts are an
    error), or "auto": on for message-list prompts and whenever `system_prompt` is set, off for text prompts
    (the arithmetic task's raw "37+48=")."""
    system_prompt: str | None = None
    """A system message put before every chat-templated prompt (a row that starts with its own system message
    keeps it instead); None = none. Turns "auto" on for text prompts; an error with use_chat_template = False."""
    seed: int = 0
    """Seed of the task generator, the train/eval split and the prompt order."""


@dataclass(kw_only=True)
class RewardConfig:
    path: str | None = None
    """Your reward function's .py file (or an importable dotted module name); None = the data source's rule:
    a built-in task's own, else `rlkit.rewards.math_reward` (the reply's final answer, by value). With
    `model.reward_model_path` set, the reward model trains the policy and this rule is what `evaluate` counts."""
    name: str = "compute_score"
    """The function in `path` (verl's `custom_reward_function.name` default)."""
    style: str = "auto"
    """Its calling convention: "rlkit" `(response_text, ground_truth, eos_seen)`, "verl"
    `compute_score(data_source, solution_str, ground_truth, extra_info)`, or "auto" (verl's when it has a
    `data_source` or `solution_str` parameter). It returns a number, or a dict with "score" whose other
    numeric keys are logged as `reward/<key>`; it may be `async def`."""
    num_workers: int = 4
    """Threads that score a batch's responses (helps functions that wait: sandboxes, HTTP verifiers)."""
    timeout_s: float | None = 60.0
    """Seconds one call may take before the run stops with an error naming the row; None = no limit (with
    num_workers = 1 rows are then scored in-line, in order, and `breakpoint()` works in the function)."""


@dataclass(kw_only=True)
class ActorConfig:
    lr: float = 1e-6
    """Peak learning rate of the policy (AdamW)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    warmup_steps: int = 0
    """Linear warm-up of the learning rate over this many optimizer steps."""
    lr_schedule: str = "constant"
    """Learning rate after warm-up: "constant" or "cosine" (to 0 at `total_steps`; needs total_steps)."""
    total_steps: int | None = None
    """Optimizer steps of the whole run, for the cosine schedule; None = unknown (constant schedule only)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None = no clipping."""
    mini_batch_size: int = 32
    """Samples per optimizer step (global, over all ranks)."""
    micro_batch_size: int = 4
    """Samples per forward/backward pass on one rank (gradient accumulation up to the mini-batch)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    skip_old_logprobs: bool = False
    """Skip the old-log-prob forward when it cannot matter: with ppo_epochs = 1 and the whole batch in one
    mini-batch, every sample gets exactly one optimizer step from the policy that generated it, so the loss
    uses its own log-probs, detached, as the old ones (ratio 1, the same gradient; TRL's default). Saves a
    forward per step; costs the rollout-vs-trainer log-prob gap (no old_logprobs in the batch), and a second
    `learn` on the same batch is then unclipped. Algorithms that put the KL in the reward (PPO, REINFORCE++)
    always compute them."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus in the policy loss."""
    offload: bool = False
    """Move parameters and optimizer state to CPU between stages (frees device memory for rollout)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    logits_chunk_size: int = 0
    """Opt-in (try 256 on large vocabularies). Response tokens per chunk when the policy and reference compute log-probs and entropy: the LM head runs on
    the final hidden states one chunk at a time, in float32, and again in backward, so only (chunk, vocabulary)
    blocks of logits exist (50 MB each at 256 tokens of a 49k vocabulary; forward holds about three) instead of
    the whole (micro-batch, response length, vocabulary) tensor, its softmax temporaries and what backward keeps
    of them. 0 = the whole logits at once (the unchunked path). Models that change their logits after the head
    (Gemma's soft-capping) always take the unchunked path. The two agree to float32 rounding per call, but
    500 SFT steps of the tiny arithmetic model with chunks ended at another policy (54% vs 66% exact match),
    inside the 44-66% that summation order alone spreads that SFT over (BENCHMARKS.md, the SFT rounding
    spread): off by default so the learning tests keep the start their bars were measured from."""
    max_tokens_per_micro_batch: int = 0
    """Token budget of one micro-batch of the actor's update and log-prob passes (and the reference's), instead
    of `micro_batch_size` rows: rows longest first, as many as fit (rows x longest row padded, their real tokens
    packed); every rank runs as many micro-batches as the busiest one, and with several ranks each mini-batch is
    dealt so every rank gets about the same tokens. The losses are normalised by global token counts, so the
    result equals the row split to float rounding. 0 = `micro_batch_size` rows."""
    lora_rank: int = 0
    """Train LoRA adapters of this rank (through PEFT) instead of every weight; 0 = full fine-tuning. The
    reference policy is then the same model with the adapters disabled (no second copy of the weights), the hf
    engine generates with the adapted model, vLLM and exports receive the merged weights `W + alpha/r B A`."""
    lora_alpha: float = 16.0
    """LoRA scaling numerator: the adapters' output is multiplied by lora_alpha / lora_rank."""
    lora_target_modules: str = "all-linear"
    """Layers that get adapters: "all-linear" (every linear layer but the LM head) or comma-separated module
    names ("q_proj,k_proj,v_proj,o_proj")."""
    pack_sequences: bool = False
    """Run each micro-batch of the actor (and reference) as one packed row without padding: sequences
    side by side with positions restarting at 0, the attention kept apart by transformers' packed-sequence
    masks (flash-attention 2 varlen on GPU). Checked at start-up on the model; padded (with a warning) where
    the attention does not keep packed sequences apart. Equal to the padded computation to float rounding."""
    on_nonfinite: str = "skip"
    """What a step does with NaN/inf scores or costs (or ones beyond +-1e15, which overflow the advantages) and
    with optimizer steps skipped for a non-finite gradient norm (actor or critic): "skip" warns with the step
    and the rows (or the role) and goes on, the optimizer skipping what it cannot apply (counted in
    `actor/skipped_steps`); "raise" stops the step with an error (rlkit.nonfinite)."""


@dataclass(kw_only=True)
class CriticConfig:
    lr: float = 1e-5
    """Peak learning rate of the critic (AdamW)."""
    warmup_steps: int = 0
    """Linear warm-up of the critic learning rate, in optimizer steps."""
    grad_clip: float | None = 1.0
    """Clip the critic's global gradient norm; None = no clipping."""
    micro_batch_size: int = 4
    """Samples per critic forward/backward on one rank (mini-batches are the actor's)."""
    value_clip: float | None = 0.5
    """Clip new values to old values +- this (PPO value clipping); None = no clipping."""
    offload: bool = False
    """Move critic parameters and optimizer state to CPU between stages."""
    max_tokens_per_micro_batch: int = 0
    """Token budget of one critic micro-batch (as `actor.max_tokens_per_micro_batch`), also used when a reward or cost
    model scores rollouts; 0 = `micro_batch_size` rows."""
    pack_sequences: bool = False
    """Run each critic micro-batch as one packed row without padding (as `actor.pack_sequences`)."""


@dataclass(kw_only=True)
class ClusterConfig:
    backend: str = "ray"
    """Worker backend: "ray" (one process per device) or "local" (one rank in this process; breakpoint() works)."""
    address: str | None = None
    """Ray cluster to join ("auto" or "host:port"); None = start a local one."""
    nodes: int = 1
    """Nodes to use."""
    devices_per_node: int = 1
    """Devices (GPUs, or CPU slots on a host without GPU) per node."""
    placement: str = "colocate"
    """Model placement: "colocate" (all models share every device), "split" or "auto" (rlkit.planner decides)."""
    threads_per_worker: int | None = None
    """torch threads per worker process; None = the cores of the host divided among its workers."""
    num_cpus: int | None = None
    """Logical CPU slots of a local Ray cluster that rlkit starts; None = max(cores, 8), so a 2-rank pool and its
    colocated roles fit on a small machine (a slot is a scheduling unit, not a core)."""
    device: str = "auto"
    """Device kind: "auto" (CUDA when available), "cpu" or "cuda"."""
    shard_one_rank: bool = False
    """Wrap models in FSDP2 even when their group has one rank. Off: a one-rank fp32 model is a plain module
    (FSDP2 over one rank gathers nothing but still copies each layer's parameters at every forward and sends
    every parameter op through DTensor dispatch). Models with bf16 mixed precision (CUDA) are always wrapped."""


@dataclass(kw_only=True)
class LoggingConfig:
    run_dir: str = "runs"
    """Folder under which each run gets its own folder (metrics, samples, checkpoints)."""
    run_name: str | None = None
    """Name of the run (folder and W&B name); None = algorithm name and a timestamp."""
    wandb: bool = False
    """Log to Weights & Biases."""
    wandb_project: str = "rlkit"
    """W&B project."""
    wandb_mode: str = "online"
    """W&B mode: "online", "offline" or "disabled"."""
    log_every: int = 1
    """Log metrics every this many RL steps."""
    eval_every: int = 0
    """Evaluate on the held-out prompts every this many RL steps; 0 = never."""
    save_every: int = 0
    """Checkpoint the whole run (`Session.save`) every this many RL steps in `train()` / `rlkit train`;
    0 = only when asked."""
    keep_last: int = 0
    """Keep only the newest this many checkpoints of the run (older ones are deleted after each save); 0 = all."""
    dashboard: bool = True
    """Show the live dashboard in notebooks."""


class _Checker:
    """Collects `key = value: rule` messages; None values of optional fields are skipped by the range helpers."""

    def __init__(self, cfg: Config):
        self.cfg, self.errors = cfg, []

    def check(self, key: str, ok, rule: str) -> None:
        section, name = key.split(".")
        value = getattr(getattr(self.cfg, section), name)
        if value is not None and not ok(value):
            self.fail(key, value, rule)

    def fail(self, key: str, value: Any, rule: str) -> None:
        self.errors.append(f"{key} = {value!r}: {rule}")

    def greater(self, key, lo):
        self.check(key, lambda v: v > lo, f"must be > {lo}")

    def at_least(self, key, lo):
        self.check(key, lambda v: v >= lo, f"must be >= {lo}")

    def one_of(self, key, choices):
        self.check(key, lambda v: v in choices, "must be one of " + ", ".join(repr(c) for c in choices))

    def non_empty(self, key):
        self.check(key, lambda v: v.strip() != "", "must be a non-empty string")

    def raise_if_any(self):
        if self.errors:
            raise ConfigError("\n".join(self.errors))


# ---------------------------------------------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Config:
    """A whole run. Sections are typed dataclasses; `validate()` holds every check."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Models: policy, tokenizer, reward/cost models, critic initialisation."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompt dataset."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """The rule that scores responses (when no reward model does): your function, its convention, threads."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Multi-turn rollouts with an environment (off unless env.name or Session(env=...) gives one)."""
    actor: ActorConfig = field(default_factory=ActorConfig)
    """Optimisation of the policy."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """Optimisation of the critic (algorithms with a value model)."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """Algorithm and its knobs (flat: every algorithm reads the fields it needs)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Processes and devices."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Run folder, W&B and dashboard."""
    seed: int = 0
    """Global seed (model initialisation of tiny presets, torch RNGs)."""

    def __post_init__(self):
        _check_types(self, fix=True)  # normalise first (int -> float, list -> tuple) so equality is by value
        self.validate()

    # ---- derived values: computed here only, never stored, never in YAML -------------------------------------
    @property
    def rollout_batch_size(self) -> int:
        """Samples per RL step: prompts_per_step * n."""
        return self.rollout.prompts_per_step * self.rollout.n

    @property
    def num_mini_batches(self) -> int:
        """Optimizer steps per epoch over one rollout batch."""
        return self.rollout_batch_size // self.actor.mini_batch_size

    @property
    def optimizer_steps_per_rl_step(self) -> int:
        """Actor optimizer steps per RL step: mini-batches times epochs."""
        return self.num_mini_batches * self.actor.ppo_epochs

    @property
    def world_size(self) -> int:
        """Devices (ranks) of the cluster: nodes * devices_per_node."""
        return self.cluster.nodes * self.cluster.devices_per_node

    def resolved_device(self) -> str:
        """ "cuda" or "cpu": `cluster.device` with "auto" resolved on this host."""
        if self.cluster.device != "auto":
            return self.cluster.device
        import torch  # lazy: `import rlkit.config` must stay cheap

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self):
        """torch dtype of `model.dtype`, "auto" being bfloat16 on CUDA and float32 on CPU."""
        import torch

        name = self.model.dtype
        if name == "auto":
            name = "bfloat16" if self.resolved_device() == "cuda" else "float32"
        return getattr(torch, name)

    # ---- construction ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        """Build from a nested dict (missing keys take defaults; unknown keys are an error)."""
        return _build(cls, d, "")

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain YAML types (tuples become lists)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Config:
        """A named preset (see `PRESETS`) with overrides in the forms of `override` (`actor__lr=1e-5` too)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
        return cls.from_dict(PRESETS[name][1]).override(**overrides)

    @staticmethod
    def presets() -> dict[str, str]:
        """Preset name -> one-line description."""
        return {name: desc for name, (desc, _) in PRESETS.items()}

    def override(self, overrides: Mapping[str, Any] | None = None, /, **kwargs: Any) -> Config:
        """A new Config with overrides applied. Keys are dotted paths ("actor.lr"; "actor__lr" as a keyword) or
        section names: a dict value merges into the section, a string sets the section's `name` (algo="ppo")."""
        d = self.to_dict()
        items = list((overrides or {}).items()) + [(k.replace("__", "."), v) for k, v in kwargs.items()]
        for key, value in items:
            _apply(Config, d, str(key), value)
        return type(self).from_dict(d)

    # ---- YAML ------------------------------------------------------------------------------------------------
    def to_yaml(self, path: str | Path | None = None, *, docs: bool = False) -> str:
        """The config as YAML (every field, section by section); written to `path` when given.
        `docs=True` puts each field's docstring above it as a comment."""
        text = _to_yaml(self, docs)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> Config:
        """Build from a YAML file (a Path, or a string naming an existing file or ending in .yaml/.yml) or YAML
        text. Missing keys take defaults."""
        d, where = _load_yaml(path_or_text)
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None

    # ---- validation: every check of every field lives here ---------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError listing every bad field as `section.field = value: what is allowed`."""
        # lazy: the owners of these values import torch (rlkit.algos.core) or the algorithm modules (base)
        from rlkit.algos.base import config_problems
        from rlkit.algos.core import AGG_MODES, KL_KINDS
        from rlkit.algos.rollout_correction import IS_LEVELS, MASK_LEVELS
        from rlkit.rewards.loader import looks_like_file
        from rlkit.rollout.decode import KV_CACHES
        from rlkit.rollout.engine import ENGINE_NAMES

        _check_types(self, fix=False)
        c = _Checker(self)
        for key in ("data.digits", "data.train_size", "data.max_prompt_len", "rollout.prompts_per_step",
                    "rollout.n", "rollout.max_new_tokens", "rollout.sync_bucket_mb", "rollout.vllm_tensor_parallel_size",
                    "actor.total_steps", "actor.mini_batch_size", "actor.micro_batch_size", "actor.ppo_epochs",
                    "critic.micro_batch_size", "cluster.nodes", "cluster.devices_per_node",
                    "cluster.threads_per_worker", "cluster.num_cpus", "logging.log_every", "reward.num_workers",
                    "rollout.pool_devices", "rollout.partial_segment", "env.max_turns", "env.max_tokens",
                    "env.num_workers"):
            c.at_least(key, 1)
        for key in ("data.eval_size", "rollout.temperature", "rollout.top_k", "actor.warmup_steps",
                    "actor.weight_decay", "actor.entropy_coef", "critic.warmup_steps", "algo.clip_high",
                    "algo.kl_coef", "algo.lagrange_init", "algo.lagrange_lr", "algo.overlong_buffer",
                    "algo.overlong_penalty", "logging.eval_every", "logging.save_every", "logging.keep_last",
                    "actor.max_tokens_per_micro_batch", "critic.max_tokens_per_micro_batch", "actor.lora_rank",
                    "rollout.async_steps"):
            c.at_least(key, 0)
        for key in ("actor.lr", "critic.lr", "actor.grad_clip", "critic.grad_clip", "critic.value_clip", "actor.lora_alpha",
                    "algo.kl_target", "reward.timeout_s", "algo.rollout_is_cap", "env.step_timeout_s"):
            c.greater(key, 0)
        c.greater("algo.dual_clip", 1)  # dual-clip PPO needs c > 1 (Ye et al. 2020)
        for key in ("rollout.top_p", "rollout.vllm_gpu_memory_utilization"):
            c.check(key, lambda v: 0 < v <= 1, "must be in (0, 1]")
        for key in ("algo.gamma", "algo.lam"):
            c.check(key, lambda v: 0 <= v <= 1, "must be in [0, 1]")
        c.check("algo.clip_low", lambda v: 0 <= v < 1, "must be in [0, 1)")
        c.check("algo.rollout_mask_low", lambda v: 0 <= v <= 1, "must be in [0, 1] (a ratio of 1 stays in the band)")
        c.check("algo.rollout_mask_high", lambda v: v >= 1, "must be >= 1 (a ratio of 1 stays in the band)")
        c.check("actor.betas", lambda v: all(0 <= b < 1 for b in v), "both betas must be in [0, 1)")
        for key, choices in (("model.dtype", ("auto", "float32", "bfloat16")),
                             ("model.attn_implementation", ("eager", "sdpa", "flash_attention_2")),
                             ("rollout.engine", ENGINE_NAMES), ("rollout.gather_weights", ("auto", "always")),
                             ("rollout.kv_cache", KV_CACHES),
                             ("actor.lr_schedule", ("constant", "cosine")), ("actor.on_nonfinite", ("skip", "raise")),
                             ("algo.loss_agg", AGG_MODES), ("algo.kl_kind", KL_KINDS),
                             ("algo.rollout_is", IS_LEVELS), ("algo.rollout_mask", MASK_LEVELS),
                             ("cluster.backend", ("ray", "local")), ("cluster.placement", ("colocate", "split", "auto")),
                             ("cluster.device", ("auto", "cpu", "cuda")),
                             ("logging.wandb_mode", ("online", "offline", "disabled")),
                             ("reward.style", ("auto", "rlkit", "verl")), ("env.on_error", ("end", "raise"))):
            c.one_of(key, choices)
        for key in ("model.preset", "data.source", "data.prompt_key", "data.answer_key", "cluster.address",
                    "logging.run_dir", "logging.run_name", "logging.wandb_project", "reward.path", "env.name",
                    "env.observation_role"):
            c.non_empty(key)
        c.check("reward.name", lambda v: all(part.isidentifier() for part in v.split(".")),
                "must be a Python name (or a dotted attribute path like 'Scorer.score')")
        c.check("data.use_chat_template", lambda v: v is True or v is False or v == "auto",
                'must be true, false or "auto"')
        c.check("data.system_prompt", lambda v: v.strip() != "", "must be a non-empty string or null")
        c.check("data.operators", lambda v: v != "" and set(v) <= set("+-*"),
                'must be a non-empty string of operators among "+-*"')
        c.check("rollout.stop", lambda v: all(v), "stop strings must be non-empty")
        c.check("algo.name", lambda v: re.fullmatch(r"[a-z][a-z0-9_+\-]*", v) is not None,
                "must be a lower-case algorithm name like 'grpo' or 'safe_rlhf'")
        c.raise_if_any()  # cross-field checks below assume each field is in range

        a, r = self.actor, self.rollout
        if a.mini_batch_size % a.micro_batch_size:
            c.fail("actor.mini_batch_size", a.mini_batch_size,
                   f"must be a multiple of actor.micro_batch_size ({a.micro_batch_size})")
        if self.rollout_batch_size % a.mini_batch_size:
            c.fail("actor.mini_batch_size", a.mini_batch_size,
                   f"must divide the rollout batch rollout.prompts_per_step * rollout.n = "
                   f"{r.prompts_per_step} * {r.n} = {self.rollout_batch_size}")
        if a.mini_batch_size % self.critic.micro_batch_size:
            c.fail("critic.micro_batch_size", self.critic.micro_batch_size,
                   f"must divide actor.mini_batch_size ({a.mini_batch_size}): the critic trains on the actor's mini-batches")
        if self.data.system_prompt is not None and self.data.use_chat_template is False:
            c.fail("data.system_prompt", self.data.system_prompt,
                   'is a chat message: needs data.use_chat_template = true or "auto" (it is false)')
        path = self.reward.path
        if path is not None and looks_like_file(path) and not Path(path).expanduser().is_file():
            c.fail("reward.path", path, f"no such file ({Path(path).expanduser().absolute()}): give a .py file "
                   "(relative to the working directory) or an importable dotted module name")
        if a.lr_schedule == "cosine" and a.total_steps is None:
            c.fail("actor.total_steps", None, 'must be set when actor.lr_schedule = "cosine"')
        if a.total_steps is not None and a.warmup_steps > a.total_steps:
            c.fail("actor.warmup_steps", a.warmup_steps, f"must be <= actor.total_steps ({a.total_steps})")
        if not 0 <= r.min_new_tokens <= r.max_new_tokens:
            c.fail("rollout.min_new_tokens", r.min_new_tokens, f"must be in 0..rollout.max_new_tokens ({r.max_new_tokens})")
        if r.compile_decode and r.kv_cache != "static":
            c.fail("rollout.compile_decode", True, f'needs rollout.kv_cache = "static" (it is {r.kv_cache!r}): a '
                   "dynamic cache changes shape at every token, so every step would recompile")
        if self.algo.overlong_buffer >= r.max_new_tokens and self.algo.overlong_buffer > 0:
            c.fail("algo.overlong_buffer", self.algo.overlong_buffer,
                   f"must be < rollout.max_new_tokens ({r.max_new_tokens})")
        if self.cluster.backend == "local" and self.world_size != 1:
            c.fail("cluster.backend", "local", f"runs one rank; got cluster.nodes * cluster.devices_per_node = "
                   f"{self.world_size} (use backend 'ray' or one device)")
        if r.async_steps and r.engine != "hf":
            c.fail("rollout.async_steps", r.async_steps, f'needs rollout.engine = "hf" (it is {r.engine!r}): the '
                   "rollout pool runs the hf engine; vLLM on a pool of its own is not built yet")
        if r.partial and not r.async_steps:
            c.fail("rollout.partial", True, "needs rollout.async_steps >= 1 (partial rollouts continue a generation "
                   "on weights pushed to the rollout pool while it runs)")
        if r.partial and r.pool_devices != 1:
            c.fail("rollout.partial", True, f"needs rollout.pool_devices = 1 (it is {r.pool_devices}): ranks would "
                   "take mailbox weights at different segments")
        if r.async_steps and self.cluster.backend == "local" and r.pool_devices != 1:
            c.fail("rollout.pool_devices", r.pool_devices, "must be 1 with cluster.backend = 'local' (one process)")
        if self.env.name is not None and r.async_steps:
            c.fail("rollout.async_steps", r.async_steps, f"needs env.name = None (it is {self.env.name!r}): the "
                   "rollout pool generates single-turn responses; multi-turn episodes run synchronously")
        if self.env.name is not None:
            from rlkit.envs.builtin import BUILTIN_ENVS  # lazy: imports no torch

            if self.env.name not in BUILTIN_ENVS:
                c.fail("env.name", self.env.name, "must be a built-in environment: " + ", ".join(
                    repr(n) for n in BUILTIN_ENVS) + " (your own: rlkit.Session(cfg, env=MyEnv))")
        if self.cluster.backend == "local" and self.cluster.address is not None:
            c.fail("cluster.address", self.cluster.address, "needs cluster.backend = 'ray'")
        # the algorithm's own checks: its name is known and the config gives it what its spec asks for
        c.errors.extend(config_problems(self))
        c.raise_if_any()
