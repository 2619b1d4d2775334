"""`HybridActor`: HybridFlow's ActorRollout worker, a policy and its rollout engine in one process.

A role class for a `WorkerGroup`, built by composition: it HAS a `PolicyWorker` (the
FSDP2-sharded trainable model, its optimizer, residency and stats) and a `RolloutEngine`
(`rlkit.rollout.engine`; built from the engine name: "hf" generates on that same model's
parameters, "vllm" on its own copy of them). Nothing is inherited; the training methods
are small explicit delegations, so the group exposes one `actor` role that can `generate`,
`compute_logprobs`, `update` and `sync_weights`.

```python
group = WorkerGroup(pool, {"actor": RoleSpec(HybridActor, kwargs={
    "model": "/path/to/model", "optim": {"lr": 1e-5}, "rollout": cfg.rollout})})
prompts = Batch.from_prompts(ids, mask, prompt_text=texts)       # B prompts
samples = group.actor.generate(prompts, SamplingParams(n=4))   # 4B rows, group_id = prompt row
samples = samples.replace(old_logprobs=group.actor.compute_logprobs(samples).old_logprobs)
group.actor.update(samples.replace(advantages=adv), loss_fn)     # the engine is now stale
group.actor.sync_weights()   # per rank: {"mode", "seconds", "bytes", ...}; the next generate syncs nothing
```

Weight sync is an explicit step: `update` and `load_checkpoint` mark the engine stale,
`sync_weights` brings it up to date (vLLM: streams the shards into its copy; hf: nothing to
move). A `generate` on a stale engine syncs first as a fallback and reports it in its stats
(`<role>/generate/stale` = 1, `.../sync_bytes`, `.../sync_seconds`), warning once when an
`update` was never followed by `sync_weights`.

Samples per prompt: the driver sends prompts; each rank expands its own prompts n
times (rows of one prompt stay on one rank, consecutive). `group_id` is the prompt's
row index in the batch the driver sent (or the batch's own `group_id` when set): the
`split` protocol gives rank r the contiguous rows `[r*m, (r+1)*m)`, so rank r numbers
its prompts from `r*m`, and groups agree across ranks without any communication.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Callable

import torch

from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.rollout.engine import RolloutEngine, report_dict
from rlkit.rollout.sampling import SamplingParams
from rlkit.workers.policy import PolicyWorker


def _build_hf(policy: PolicyWorker, *, rank: int, seed: int, rollout: Any, keep_unsharded: bool | None,
              audit_memory: bool, vllm: dict | None) -> RolloutEngine:
    from rlkit.rollout.hf import HFEngine

    return HFEngine(policy.model, policy.tokenizer, rank=rank, seed=seed, keep_unsharded=keep_unsharded,
                    audit_memory=audit_memory, kv_cache=getattr(rollout, "kv_cache", "dynamic"),
                    compile_decode=getattr(rollout, "compile_decode", False))


def _build_vllm(policy: PolicyWorker, *, rank: int, seed: int, rollout: Any, keep_unsharded: bool | None,
                audit_memory: bool, vllm: dict | None) -> RolloutEngine:
    from rlkit.rollout.vllm_engine import VLLMEngine, VLLMOptions  # the optional extra: imported on demand

    options = VLLMOptions.from_rollout_config(rollout, **(vllm or {}))
    return VLLMEngine(policy.model, policy.tokenizer, rank=rank, seed=seed, options=options)


ENGINE_BUILDERS: dict[str, Callable[..., RolloutEngine]] = {"hf": _build_hf, "vllm": _build_vllm}
"""`rollout.engine` name -> a function building that engine on the actor's policy (keyword arguments:
rank, seed, rollout, keep_unsharded, audit_memory, vllm; each engine takes what concerns it)."""


class HybridActor:
    """The actor role that also generates: `PolicyWorker` + a `RolloutEngine` on the policy's weights."""

    def __init__(
        self,
        ctx: WorkerContext,
        *,
        rollout: Any = None,
        keep_unsharded: bool | None = None,
        audit_memory: bool = False,
        engine: str | None = None,
        vllm: dict | None = None,
        **policy_kwargs: Any,
    ):
        """
        rollout: an `rlkit.config.RolloutConfig` or a dict of `SamplingParams` fields (+ `seed`): the
            default sampling of `generate` and the engine's base seed. None: `SamplingParams()` defaults.
        keep_unsharded, audit_memory: see `HFEngine` (keep_unsharded None: gather in place for generation
            when world_size > 1; audit_memory: measure parameter storage during generation, slower).
        engine: "hf" or "vllm" (None: `rollout.engine`, else "hf"); vllm: `VLLMOptions` fields over the ones
            taken from the rollout config (sync_bucket_mb, vllm_tensor_parallel_size, ...).
        policy_kwargs: the `PolicyWorker` constructor's (model, optim, mini_batch_size, micro_batch_size,
            tokenizer_path, seed, ...). `temperature` defaults to the rollout temperature, so that the
            trainer's log-probs are those of the distribution the engine samples from.
        """
        self.ctx = ctx
        if isinstance(rollout, dict):
            rollout = dict(rollout)
            base_seed = int(rollout.pop("seed", 0) or 0)
            self.sampling = SamplingParams.coerce(rollout, SamplingParams())
        elif rollout is not None:
            base_seed = int(getattr(rollout, "seed", 0) or 0)
            self.sampling = SamplingParams.from_config(rollout)
        else:
            base_seed, self.sampling = 0, SamplingParams()
        policy_kwargs.setdefault("temperature", self.sampling.logprob_temperature)
        name = engine or getattr(rollout, "engine", None) or "hf"
        if name not in ENGINE_BUILDERS:
            raise ValueError(f"rollout engine {name!r}: known engines are {sorted(ENGINE_BUILDERS)}")
        self.policy = PolicyWorker(ctx, **policy_kwargs)
        self.engine: RolloutEngine = ENGINE_BUILDERS[name](
            self.policy, rank=ctx.rank, seed=base_seed, rollout=rollout, keep_unsharded=keep_unsharded,
            audit_memory=audit_memory, vllm=vllm)
        self._warned_temperature = False
        self._updated_unsynced = False  # `update` ran and `sync_weights` has not since
        self._warned_unsynced = False

    # ------------------------------------------------------------------ rollout

    @register("split")
    def generate(self, batch: Batch, sampling: SamplingParams | dict | None = None) -> Batch:
        """n samples per prompt row of this rank's share (see the module docstring for `group_id`).

        `sampling`: SamplingParams, a dict of fields to change in the role's default, or None.
        Returns n rows per prompt with `response_ids`, `response_mask`, `rollout_logprobs`,
        `response_text` and `group_id`.
        """
        params = SamplingParams.coerce(sampling, self.sampling)
        self._check_temperature(params)
        self._check_synced()
        with self.policy.residency.on_device(), self.policy.stats.measure("generate", backward=False) as info:
            out = self.engine.generate(batch, params, group_offset=self.ctx.rank * len(batch))
            info["tokens"] = out.num_tokens()
            info["seq_len"] = float(out.prompt_ids.shape[1] + out.response_ids.shape[1])
        self._updated_unsynced = False  # the engine synced first
        info["stats"].update({f"{self.policy.name}/generate/{k}": v for k, v in self.engine.generate_stats.items()})
        return out

    @register("broadcast")
    def sync_weights(self) -> dict[str, Any]:
        """Bring the engine's weights up to the trainer's: the step between `update` and the next `generate`.

        Returns this rank's sync report as a plain dict: `mode` (str), `seconds`, `bytes` and the engine's
        other measurements (vllm: `WeightSyncStats` fields, mode "streamed", or "current" with 0 bytes
        when nothing changed; hf: mode "in-place", always 0 bytes: it generates on these parameters).
        Broadcast: the vLLM sync is collective, every rank streams its shards together.
        """
        residency = self.policy.residency.on_device() if self.engine.copies_weights else contextlib.nullcontext()
        with residency:
            report = self.engine.sync()
        self._updated_unsynced = False
        return report_dict(report)

    @register("broadcast")
    def last_sync(self) -> dict[str, Any] | None:
        """This rank's measurements of the last generate's weight preparation (the engine's `last_sync` as a
        dict: hf the in-place gather, vllm the sync it ran), or None before the first generate."""
        sync = self.engine.last_sync
        return None if sync is None else report_dict(sync)

    def _check_synced(self) -> None:
        # Warn once per rank: the fallback keeps rollouts on-policy, but the sync's time then hides inside
        # `generate` (and with vLLM's sleep level 2 an explicit sync is the one stream per step).
        if self._updated_unsynced and self.engine.stale and not self._warned_unsynced:
            self._warned_unsynced = True
            warnings.warn(
                f"{self.policy.name}.generate: the weights changed (update) and sync_weights() was not called "
                f"since; the {self.engine.name} engine syncs them first (call sync_weights() after update so "
                "that the sync is its own measured step)",
                stacklevel=3,
            )

    def _check_temperature(self, params: SamplingParams) -> None:
        # The trainer recomputes log-probs at ONE temperature; sampling at another makes
        # rollout_logprobs and old_logprobs disagree (fine for evaluation, wrong for PPO ratios).
        if not params.greedy and params.temperature != self.policy.temperature and not self._warned_temperature:
            self._warned_temperature = True
            warnings.warn(
                f"{self.policy.name}.generate: sampling temperature {params.temperature} differs from the "
                f"temperature the actor computes log-probs at ({self.policy.temperature}); rollout_logprobs "
                "will not match old_logprobs (set rollout.temperature for training runs)",
                stacklevel=2,
            )

    # ------------------------------------------------------------------ delegated to the policy

    @register("split")
    def compute_logprobs(self, batch: Batch, field: str = "old_logprobs") -> Batch:
        """See `PolicyWorker.compute_logprobs`."""
        return self.policy.compute_logprobs(batch, field)

    @register("split")
    def update(self, batch: Batch, loss_fn: Any, **kwargs: Any) -> dict[str, float]:
        """See `PolicyWorker.update` (mini_batch_size / micro_batch_size / epochs keywords). Marks the engine
        stale (also when the update fails part-way: some steps may have been taken); `sync_weights` next."""
        try:
            return self.policy.update(batch, loss_fn, **kwargs)
        finally:
            self.engine.mark_stale()
            self._updated_unsynced = True

    @register("rank0")
    def save_checkpoint(self, path: str | os.PathLike, extra: dict | None = None) -> str:
        """See `PolicyWorker.save_checkpoint`; the engine's call counter rides in `extra`."""
        return self.policy.save_checkpoint(path, {**(extra or {}), "rollout_calls": self.engine.calls})

    @register("rank0")
    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """See `PolicyWorker.load_checkpoint`; restores the engine's call counter (sampling resumes exactly) and
        marks the engine stale: the next `sync_weights` (or, as its fallback, `generate`) brings the loaded
        weights to it."""
        extra = dict(self.policy.load_checkpoint(path))
        self.engine.mark_stale()
        self.engine.calls = int(extra.pop("rollout_calls", self.engine.calls))
        return extra

    @register("rank0")
    def save_pretrained(self, path: str | os.PathLike) -> str:
        """See `PolicyWorker.save_pretrained`."""
        return self.policy.save_pretrained(path)

    @register("rank0")
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """See `PolicyWorker.full_state_dict`."""
        return self.policy.full_state_dict()

    @register("broadcast")
    def pop_stats(self) -> list[dict[str, float]]:
        """See `PolicyWorker.pop_stats` (generate calls included)."""
        return self.policy.pop_stats()

    @register("rank0")
    def optimizer_steps(self) -> int:
        return self.policy.optimizer_steps()

    @staticmethod
    def kwargs_from_config(cfg: Any) -> dict[str, Any]:
        """Constructor kwargs from an `rlkit.config.Config` (the policy's plus the rollout section)."""
        kwargs = {**PolicyWorker.kwargs_from_config(cfg), "rollout": cfg.rollout}
        if cfg.rollout.gather_weights == "always":
            kwargs["keep_unsharded"] = True  # "auto": None, the engine decides by world size
        # log-probs at the temperature the engine samples at (greedy rollouts: 1, never a division by 0)
        kwargs["temperature"] = SamplingParams.from_config(cfg.rollout).logprob_temperature
        return kwargs


__all__ = ["HybridActor"]
