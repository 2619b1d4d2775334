"""The reinforcement-learning sections of the run configuration: `rollout`, `env` and `algo`.

Kept apart from `rlkit/config/schema.py` (the other sections, `Config` and its checks), which imports
them; `import rlkit.config` still imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    kv_cache: str = "dynamic"
    """KV cache of the hf engine's sampling loop: "dynamic" (transformers' DynamicCache; rows that end are
    dropped, so later tokens cost only the rows still going) or "static" (a StaticCache allocated once for
    prompt + max_new_tokens and written in place: no copy per token and fixed shapes for `compile_decode`,
    but finished rows are computed until the last one ends and attention always spans the whole length).
    Both give the same tokens. Measured on CPU, one thread (benchmarks/decode_loop.py, 64 rows, 16 tokens):
    static alone is 0-7% slower per token with every row at full length (1M model and SmolLM2-135M) and
    25-40% slower when rows end at EOS (1M model, mean length 10 of 16); worth it only with compile_decode."""
    compile_decode: bool = False
    """Run the hf engine's decode steps through `torch.compile` (needs kv_cache = "static"). Costs a compile
    on the first call of every new (batch size, cache length) shape (43 s cold on 2 shared CPU cores for the
    1M model; lengths are rounded up to a multiple of 32 so that nearby prompt widths share a graph), then
    measured 0.82-0.86x the per-token time of transformers `generate` on the 1M model on CPU (8-24% below
    the dynamic cache at full length; about even with it when rows end at EOS). Not measured on GPU or on
    SmolLM2-135M, and not tried with FSDP-wrapped models."""
    async_steps: int = 0
    """Asynchronous training in `s.train()` / `s.step()`: 0 runs the synchronous loop (generate, prepare, learn,
    one after the other, on the actor's own engine). k >= 1 generates on a rollout pool of its own
    (`rollout.pool_devices` ranks, the hf engine on a copy of the policy) up to k steps ahead of the trainer,
    so generation overlaps with training and every trained sample was drawn by a policy at most k updates
    old (`Batch.policy_version`; 1 = one-step-off). The weights go to the pool through the driver after
    every update. Pair it with `algo.rollout_is` to correct for the staleness. `s.generate()`, `s.prepare()`
    and `s.learn()` called as cells stay synchronous. See `rlkit.pipeline`."""
    pool_devices: int = 1
    """Ranks (devices; on CPU, worker processes) of the rollout pool when `rollout.async_steps >= 1`."""
    partial: bool = False
    """Partial rollouts (needs `async_steps >= 1`, Ray backend): the pool generates in segments of
    `partial_segment` new tokens and takes weights the trainer pushed meanwhile between two segments, so a
    generation that a weight update interrupts continues on the new weights instead of finishing on the old
    ones; every token records the version that drew it (`Batch.token_policy_version`). Without it, a pushed
    update waits for the generations already submitted."""
    partial_segment: int = 16
    """New tokens per segment of a partial rollout (`rollout.partial`)."""
    vllm_gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take (weights + KV cache); the rest stays with the trainer."""
    vllm_tensor_parallel_size: int = 1
    """Tensor-parallel size of each vLLM engine."""


@dataclass(kw_only=True)
class AlgoConfig:
    name: str = "grpo"
    """Algorithm: the name of a module of rlkit.algos ("ppo", "grpo", "dr_grpo", "dapo", "gspo", "remax", "rloo",
    "reinforce_pp", "safe_rlhf") or one given to `rlkit.algos.base.register_algorithm`."""
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
    rollout_is: str | None = None
    """Weight the policy loss by min(pi_old / pi_rollout, rollout_is_cap) per "token" or "sequence"; None = off."""
    rollout_is_cap: float = 2.0
    """Truncation of the rollout importance weights (see rlkit.algos.rollout_correction)."""
    rollout_mask: str | None = None
    """Zero the policy loss where pi_old / pi_rollout leaves [rollout_mask_low, rollout_mask_high]: per "token",
    "sequence" or "geometric" (per-sequence geometric mean); None = off."""
    rollout_mask_low: float = 0.5
    """Lower edge of the rollout_mask band (<= 1)."""
    rollout_mask_high: float = 2.0
    """Upper edge of the rollout_mask band (>= 1)."""


@dataclass(kw_only=True)
class EnvConfig:
    name: str | None = None
    """A built-in environment (`rlkit.envs.builtin`: "guess_number", "calculator") for multi-turn rollouts, or
    None: single-turn rollouts, unless `Session(cfg, env=MyEnv)` gives an environment of your own."""
    max_turns: int = 4
    """Most policy turns per episode (an episode the environment has not ended by then is truncated)."""
    max_tokens: int = 256
    """Token budget of an episode after its opening prompt: the policy's and the environment's tokens together
    (the trained response is at most this long). Each turn also stops at rollout.max_new_tokens."""
    step_timeout_s: float | None = 30.0
    """Deadline of one `reset` or `step` call, in seconds (None: wait for ever)."""
    num_workers: int = 8
    """Environments stepped side by side (threads); 1 with no timeout steps them in the calling thread."""
    on_error: str = "end"
    """When an environment raises, times out or answers something that is not a StepResult: "end" ends that
    episode where it is (reward so far, counted in env/errors and env/timeouts) and the run goes on; "raise"
    stops the stage with the error, which names the environment, the sample and the turn."""
    observation_role: str = "user"
    """The chat role of an observation returned as a string ("user", or "tool" for templates that have it)."""
