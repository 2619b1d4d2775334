"""Typed run configuration: one dataclass per section, one docstring per field.

    cfg = Config.preset("arithmetic-tiny", algo="ppo", actor={"lr": 1e-4}, rollout__n=8)
    cfg = cfg.override({"actor.lr": 1e-5})          # a new, validated Config
    text = cfg.to_yaml(); assert Config.from_yaml(text) == cfg

The dataclasses below are the only source of truth: YAML, dicts, presets and the CLI
(`add_config_args` / `config_from_args`) all go through `Config.from_dict`, and every check
lives in `Config.validate()`, which raises `ConfigError` naming the dotted field, the bad
value and what is allowed. Derived values (e.g. `rollout_batch_size`) are properties in one
marked block of `Config`; they are never stored or written to YAML.

Configs are plain mutable dataclasses so a notebook can poke at them; whoever consumes a
config that may have been edited by hand (the Session) calls `cfg.validate()` again.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

__all__ = [
    "ConfigError", "Config", "ModelConfig", "DataConfig", "RolloutConfig", "ActorConfig", "CriticConfig",
    "AlgoConfig", "ClusterConfig", "LoggingConfig", "PRESETS", "add_config_args", "config_from_args",
    "config_help", "field_docs",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""


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
    """Column holding the prompt text."""
    answer_key: str = "ground_truth"
    """Column holding the reference answer given to the reward function."""
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
    use_chat_template: bool = False
    """Wrap each prompt in the tokenizer's chat template as a user turn before tokenising."""
    seed: int = 0
    """Seed of the task generator, the train/eval split and the prompt order."""


@dataclass(kw_only=True)
class RolloutConfig:
    engine: str = "hf"
    """Generation engine: "hf" (transformers on the actor's own parameters) or "vllm"."""
    prompts_per_step: int = 32
    """Prompts drawn per RL step."""
    n: int = 4
    """Samples per prompt (the group size of GRPO/RLOO)."""
    temperature: float = 1.0
    """Sampling temperature; 0 = greedy."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]; 1 = off."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 = off."""
    max_new_tokens: int = 256
    """Maximum generated tokens per response (responses that hit it have no EOS)."""
    min_new_tokens: int = 0
    """No sampled response ends before this many tokens (EOS and stop tokens cannot be drawn until then;
    greedy evaluation ignores it); at most max_new_tokens. Benchmarks set it to max_new_tokens so that
    every framework generates the same number of tokens."""
    stop: list[str] = field(default_factory=list)
    """Extra stop strings besides EOS."""
    seed: int = 0
    """Seed of the sampler (combined with the step and rank so that every step draws new samples)."""
    sync_bucket_mb: int = 64
    """Size of the buckets in which actor weights are streamed to the rollout engine, in MiB."""
    gather_weights: str = "auto"
    """How the hf engine reaches the actor's FSDP weights while generating: "auto" gathers every module once
    per generate call when they are sharded over several ranks, and on an FSDP-wrapped single rank (bf16 on
    one GPU, or `cluster.shard_one_rank`) leaves FSDP's own layer-by-layer copy (no second copy of the weights
    ever exists); "always" gathers once there too: fewer copies per token (measured: 22% faster generation
    on the 1M reference model), at the price of a second copy of the weights during generation. A plain
    one-rank fp32 model has nothing to gather: both values read its parameters in place."""
    vllm_gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take (weights + KV cache); the rest stays with the trainer."""
    vllm_tensor_parallel_size: int = 1
    """Tensor-parallel size of each vLLM engine."""


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


@dataclass(kw_only=True)
class AlgoConfig:
    name: str = "grpo"
    """Algorithm (a module of rlkit.algos): e.g. "grpo", "ppo", "remax", "rloo", "safe-rlhf"."""
    gamma: float = 1.0
    """Discount factor of GAE."""
    lam: float = 1.0
    """GAE lambda."""
    clip_low: float = 0.2
    """PPO ratio clip below 1: ratios under 1 - clip_low are clipped."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (DAPO's clip-higher when larger than clip_low)."""
    dual_clip: float | None = None
    """Dual-clip PPO constant c > 1 bounding the loss of negative-advantage tokens; None = off."""
    loss_agg: str = "token-mean"
    """Loss aggregation: "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"."""
    kl_coef: float = 0.001
    """Weight of the KL penalty to the reference model; 0 = no reference model needed."""
    kl_kind: str = "k3"
    """KL estimator: "k1", "k2", "k3" (Schulman's approximations) or "abs"."""
    kl_in_reward: bool = False
    """Subtract the KL penalty from the token rewards (PPO style) instead of adding it to the loss (GRPO style)."""
    kl_target: float | None = None
    """Target KL for the adaptive KL controller (kl_coef is its initial value); None = fixed kl_coef."""
    norm_adv_by_std: bool = True
    """Group-relative methods: divide advantages by the group's reward std (GRPO) or only centre them (Dr. GRPO)."""
    cost_limit: float = 0.0
    """Safe-RLHF: the expected cost the Lagrangian constrains the policy to."""
    lagrange_init: float = 1.0
    """Safe-RLHF: initial Lagrange multiplier (>= 0)."""
    lagrange_lr: float = 0.05
    """Safe-RLHF: learning rate of the Lagrange multiplier."""
    overlong_buffer: int = 0
    """DAPO soft overlong punishment: length of the buffer before max_new_tokens; 0 = off."""
    overlong_penalty: float = 1.0
    """DAPO soft overlong punishment: penalty reached at max_new_tokens."""
    dynamic_sampling: bool = False
    """DAPO: drop prompt groups whose samples all got the same score and draw more prompts."""


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
    """Checkpoint every this many RL steps; 0 = only when asked."""
    dashboard: bool = True
    """Show the live dashboard in notebooks."""


# Only these algorithms' advantages are computed over a group of samples of one prompt: a group of one is useless.
_GROUP_ALGOS = ("grpo", "rloo")
_LOSS_AGG = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(kw_only=True)
class Config:
    """A whole run. Sections are typed dataclasses; `validate()` holds every check."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Models: policy, tokenizer, reward/cost models, critic initialisation."""
    data: DataConfig = field(default_factory=DataConfig)
    """Prompt dataset."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation."""
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
            _apply(d, str(key), value)
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
        _check_types(self, fix=False)
        c = _Checker(self)
        for key in ("data.digits", "data.train_size", "data.max_prompt_len", "rollout.prompts_per_step",
                    "rollout.n", "rollout.max_new_tokens", "rollout.sync_bucket_mb", "rollout.vllm_tensor_parallel_size",
                    "actor.total_steps", "actor.mini_batch_size", "actor.micro_batch_size", "actor.ppo_epochs",
                    "critic.micro_batch_size", "cluster.nodes", "cluster.devices_per_node",
                    "cluster.threads_per_worker", "cluster.num_cpus", "logging.log_every"):
            c.at_least(key, 1)
        for key in ("data.eval_size", "rollout.temperature", "rollout.top_k", "actor.warmup_steps",
                    "actor.weight_decay", "actor.entropy_coef", "critic.warmup_steps", "algo.clip_high",
                    "algo.kl_coef", "algo.lagrange_init", "algo.lagrange_lr", "algo.overlong_buffer",
                    "algo.overlong_penalty", "logging.eval_every", "logging.save_every"):
            c.at_least(key, 0)
        for key in ("actor.lr", "critic.lr", "actor.grad_clip", "critic.grad_clip", "critic.value_clip",
                    "algo.kl_target"):
            c.greater(key, 0)
        c.greater("algo.dual_clip", 1)  # dual-clip PPO needs c > 1 (Ye et al. 2020)
        for key in ("rollout.top_p", "rollout.vllm_gpu_memory_utilization"):
            c.check(key, lambda v: 0 < v <= 1, "must be in (0, 1]")
        for key in ("algo.gamma", "algo.lam"):
            c.check(key, lambda v: 0 <= v <= 1, "must be in [0, 1]")
        c.check("algo.clip_low", lambda v: 0 <= v < 1, "must be in [0, 1)")
        c.check("actor.betas", lambda v: all(0 <= b < 1 for b in v), "both betas must be in [0, 1)")
        for key, choices in (("model.dtype", ("auto", "float32", "bfloat16")),
                             ("model.attn_implementation", ("eager", "sdpa", "flash_attention_2")),
                             ("rollout.engine", ("hf", "vllm")), ("rollout.gather_weights", ("auto", "always")),
                             ("actor.lr_schedule", ("constant", "cosine")),
                             ("algo.loss_agg", _LOSS_AGG), ("algo.kl_kind", ("k1", "k2", "k3", "abs")),
                             ("cluster.backend", ("ray", "local")), ("cluster.placement", ("colocate", "split", "auto")),
                             ("cluster.device", ("auto", "cpu", "cuda")),
                             ("logging.wandb_mode", ("online", "offline", "disabled"))):
            c.one_of(key, choices)
        for key in ("model.preset", "data.source", "data.prompt_key", "data.answer_key", "cluster.address",
                    "logging.run_dir", "logging.run_name", "logging.wandb_project"):
            c.non_empty(key)
        c.check("data.operators", lambda v: v != "" and set(v) <= set("+-*"),
                'must be a non-empty string of operators among "+-*"')
        c.check("rollout.stop", lambda v: all(v), "stop strings must be non-empty")
        c.check("algo.name", lambda v: re.fullmatch(r"[a-z][a-z0-9_+\-]*", v) is not None,
                "must be a lower-case algorithm name like 'grpo' or 'safe-rlhf'")
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
        if a.lr_schedule == "cosine" and a.total_steps is None:
            c.fail("actor.total_steps", None, 'must be set when actor.lr_schedule = "cosine"')
        if a.total_steps is not None and a.warmup_steps > a.total_steps:
            c.fail("actor.warmup_steps", a.warmup_steps, f"must be <= actor.total_steps ({a.total_steps})")
        if self.algo.name in _GROUP_ALGOS and r.n < 2:
            c.fail("rollout.n", r.n, f"must be >= 2 for algo.name = {self.algo.name!r} (advantages are relative to the group)")
        if not 0 <= r.min_new_tokens <= r.max_new_tokens:
            c.fail("rollout.min_new_tokens", r.min_new_tokens, f"must be in 0..rollout.max_new_tokens ({r.max_new_tokens})")
        if self.algo.overlong_buffer >= r.max_new_tokens and self.algo.overlong_buffer > 0:
            c.fail("algo.overlong_buffer", self.algo.overlong_buffer,
                   f"must be < rollout.max_new_tokens ({r.max_new_tokens})")
        if self.cluster.backend == "local" and self.world_size != 1:
            c.fail("cluster.backend", "local", f"runs one rank; got cluster.nodes * cluster.devices_per_node = "
                   f"{self.world_size} (use backend 'ray' or one device)")
        if self.cluster.backend == "local" and self.cluster.address is not None:
            c.fail("cluster.address", self.cluster.address, "needs cluster.backend = 'ray'")
        c.raise_if_any()


# ---------------------------------------------------------------------------------------------------------------
# Presets: data (a nested dict over the defaults), so that each one is visible at a glance.
# ---------------------------------------------------------------------------------------------------------------

_ARITH_TINY: dict[str, Any] = {
    "model": {"preset": "qwen2-tiny", "dtype": "float32"},
    "data": {"source": "arithmetic", "digits": 2, "operators": "+", "train_size": 4096, "eval_size": 256,
             "max_prompt_len": 16},
    # answers are <= 3 digits + EOS: 6 new tokens leave room for junk that must score 0
    "rollout": {"prompts_per_step": 16, "n": 4, "temperature": 1.0, "max_new_tokens": 6},
    # RL starts from an SFT policy: on this 0.2M model one Adam step at lr 2e-4 already moves the
    # per-token log-probs by ~0.5 nat and collapses accuracy; 1e-5 improves it (BENCHMARKS.md).
    "actor": {"lr": 1e-5, "mini_batch_size": 32, "micro_batch_size": 16, "grad_clip": 1.0},
    "critic": {"lr": 1e-4, "micro_batch_size": 16},
    "algo": {"name": "grpo", "kl_coef": 0.001},
}

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "arithmetic-tiny": ("qwen2-tiny (~0.2M params) on 2-digit addition, GRPO, 16 prompts x 4 samples (about a second per step on CPU)",
                        _ARITH_TINY),
    "arithmetic-rl": ("the RL recipe for arithmetic-tiny started from its SFT policy (set model.path): 32 prompts x 8 "
                      "samples at temperature 0.7, one AdamW step of lr 1e-5 per RL step, eval on 512 prompts",
                      _ARITH_TINY | {
                          "data": {**_ARITH_TINY["data"], "eval_size": 512},
                          # 0.7 keeps samples near the greedy answer the eval scores; one optimizer step
                          # per RL step: this sharp 0.2M model takes many small steps badly (BENCHMARKS.md)
                          "rollout": {"prompts_per_step": 32, "n": 8, "temperature": 0.7, "max_new_tokens": 6},
                          "actor": {"lr": 1e-5, "mini_batch_size": 256, "micro_batch_size": 256, "grad_clip": 1.0},
                          "critic": {"lr": 1e-4, "micro_batch_size": 256},
                      }),
    "arithmetic-1m": ("the 1M benchmark model (qwen2-1m) on 2-digit addition, GRPO, 32 prompts x 8 samples",
                      _ARITH_TINY | {
                          "model": {"preset": "qwen2-1m", "dtype": "float32"},
                          "rollout": {"prompts_per_step": 32, "n": 8, "temperature": 1.0, "max_new_tokens": 6},
                          "actor": {"lr": 5e-4, "mini_batch_size": 64, "micro_batch_size": 32, "grad_clip": 1.0},
                          "critic": {"lr": 5e-4, "micro_batch_size": 32},
                      }),
}


# ---------------------------------------------------------------------------------------------------------------
# Machinery: types, dict <-> dataclass, overrides, YAML, field docs
# ---------------------------------------------------------------------------------------------------------------

def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """`value` as type `tp` (int -> float, list <-> tuple), or ConfigError naming `key`. bool is never a number."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _convert(value, arm, key)
            except ConfigError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool or tp is str:
        if isinstance(value, tp):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif origin in (list, tuple) and isinstance(value, (list, tuple)):
        if origin is list:
            return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        if len(value) == len(args):
            return tuple(_convert(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    expected = " or ".join(_type_name(a) for a in args) if origin in (typing.Union, types.UnionType) else _type_name(tp)
    raise ConfigError(f"{key} = {value!r}: expected {expected}, got {type(value).__name__}")


def _check_types(cfg: Config, fix: bool) -> None:
    errors = []
    for name, tp in _hints(Config).items():
        value = getattr(cfg, name)
        if _is_section(tp):
            if not isinstance(value, tp):
                raise ConfigError(f"{name} = {value!r}: expected a {tp.__name__}")
            targets = [(value, f"{name}.{f}", getattr(value, f), t, f) for f, t in _hints(tp).items()]
        else:
            targets = [(cfg, name, value, tp, name)]
        for obj, key, v, t, attr in targets:
            try:
                converted = _convert(v, t, key)
            except ConfigError as e:
                errors.append(str(e))
                continue
            if fix:
                setattr(obj, attr, converted)
    if errors:
        raise ConfigError("\n".join(errors))


def _unknown(key: str, valid: list[str], section: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean {(section + '.' if section else '') + close[0]!r}?)" if close else ""
    where = f"of section {section!r}" if section else "at the top level"
    return ConfigError(f"unknown key {key!r}{hint}; valid keys {where}: {', '.join(valid)}")


def _build(cls: type, d: Any, prefix: str) -> Any:
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        d = dataclasses.asdict(d)
    if d is None and prefix:  # a YAML section whose keys are all commented out
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{prefix or 'config'} = {d!r}: expected a mapping of fields")
    hints = _hints(cls)
    kwargs = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in hints:
            raise _unknown(key, list(hints), prefix)
        tp = hints[k]
        kwargs[k] = _build(tp, v, key) if _is_section(tp) else _convert(v, tp, key)
    return cls(**kwargs)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _field_type(key: str) -> Any:
    """The declared type of a dotted key (a section class for a section name); ConfigError when unknown."""
    cls, parts = Config, key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not _is_section(cls):
            raise ConfigError(f"{prefix} is a value, not a section: cannot set {key!r}")
        if part not in _hints(cls):
            raise _unknown(".".join(parts[: i + 1]), list(_hints(cls)), prefix)
        cls = _hints(cls)[part]
    return cls


def _apply(d: dict, key: str, value: Any) -> None:
    """Set `key` (dotted) in the nested dict `d` with the section shorthands of `Config.override`."""
    tp = _field_type(key)
    parts = key.split(".")
    target = d
    for part in parts[:-1]:
        target = target[part]
    last = parts[-1]
    if not _is_section(tp):
        target[last] = value
    elif isinstance(value, str):
        if "name" not in _hints(tp):
            raise ConfigError(f"{key} = {value!r}: section {key!r} has no name; pass a dict of its fields instead")
        target[last]["name"] = value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _apply(d, f"{key}.{k}", v)
    elif isinstance(value, tp):
        target[last] = _plain(dataclasses.asdict(value))
    else:
        raise ConfigError(f"{key} = {value!r}: expected a dict of fields of section {key!r}")


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


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` as a float (YAML 1.1 insists on a dot: `1.0e-5`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _load_yaml(src: str | Path) -> tuple[dict, str]:
    """(top-level mapping, description for errors) of a YAML file or YAML text."""
    where = "YAML text"
    if isinstance(src, Path) or ("\n" not in src and (src.endswith((".yaml", ".yml")) or Path(src).is_file())):
        path = Path(src)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        src, where = path.read_text(), str(path)
    try:
        d = yaml.load(src, Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {where}: {e}") from None
    if d is None:  # an empty file: all defaults
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections, got {type(d).__name__}")
    return d, where


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _to_yaml(cfg: Config, docs: bool) -> str:
    d = cfg.to_dict()
    if not docs:
        return _dump(d)
    lines = []
    for name, tp in _hints(Config).items():
        lines.append(f"# {field_docs(Config)[name]}")
        if not _is_section(tp):
            lines.append(_dump({name: d[name]}).rstrip("\n"))
            continue
        lines.append(f"{name}:")
        for f, doc in field_docs(tp).items():
            lines.append(f"  # {doc}")
            lines.extend("  " + ln for ln in _dump({f: d[name][f]}).rstrip("\n").split("\n"))
    return "\n".join(lines) + "\n"


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the docstring under it in the class source (the single place where fields are documented)."""
    try:
        tree = ast.parse(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (frozen app): fall back to names only
        return {f.name: "" for f in dataclasses.fields(cls)}
    body = tree.body[0].body
    docs = {f.name: "" for f in dataclasses.fields(cls)}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


# ---------------------------------------------------------------------------------------------------------------
# CLI: `rlkit train [CONFIG.yaml] [--preset NAME] [--algo NAME] [--set KEY=VALUE ...]`
# ---------------------------------------------------------------------------------------------------------------

def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the config arguments to `parser` (dests: config_path, preset, algo, overrides)."""
    g = parser.add_argument_group("configuration (later ones win: preset, then CONFIG.yaml, then --algo, then --set)")
    g.add_argument("config_path", nargs="?", metavar="CONFIG.yaml", default=None,
                   help="YAML config; with --preset its keys override the preset's")
    g.add_argument("--preset", default=None, choices=list(PRESETS), help="start from a named preset")
    g.add_argument("--algo", default=None, help="algorithm name (sets algo.name)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set actor.lr=1e-5 --set rollout.stop='[\"\\n\"]' "
                        "(values are YAML scalars; see rlkit.config.config_help() for every key)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config described by the arguments of `add_config_args`."""
    cfg = Config.preset(args.preset) if getattr(args, "preset", None) else Config()
    if getattr(args, "config_path", None):
        d, where = _load_yaml(Path(args.config_path))
        try:
            cfg = cfg.override(d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    if getattr(args, "algo", None):
        cfg = cfg.override(algo=args.algo)
    sets = {}
    for item in getattr(args, "overrides", None) or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set actor.lr=1e-5")
        sets[key.strip()] = parse_value(key.strip(), raw)
    return cfg.override(sets)


def parse_value(key: str, raw: str) -> Any:
    """Parse a command-line value for `key` as a YAML scalar, guided by the field's type: a field that takes
    strings keeps the raw text unless it reads as null ("null", "~", "None") and the field is optional."""
    tp = _field_type(key)
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        value = raw
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    if type(None) in args and raw.strip() in ("null", "~", "None", "none", ""):
        return None
    if (str in args or _is_section(tp)) and not isinstance(value, (str, dict)):
        return raw  # e.g. run_name=123 or algo=1e5 stay text; the type check decides whether that is allowed
    return value


def config_help() -> str:
    """Every dotted key with its type, default and docstring (for `--help`-style listings)."""
    d, lines = Config().to_dict(), []
    for name, tp in _hints(Config).items():
        fields = [(name, tp, d[name], field_docs(Config)[name])] if not _is_section(tp) else [
            (f"{name}.{f}", t, d[name][f], field_docs(tp)[f]) for f, t in _hints(tp).items()]
        for key, t, default, doc in fields:
            lines.append(f"{key} ({_type_name(t)}, default {default!r}): {doc}")
    return "\n".join(lines)
