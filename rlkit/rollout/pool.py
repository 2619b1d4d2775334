"""`RolloutWorker`: the role of a rollout pool of its own, for asynchronous training (`rollout.async_steps`).

In the synchronous loop the actor generates on its own parameters (`HybridActor`). To overlap generation
with training, the rollouts must come from other processes: each rank of the rollout pool holds a frozen
copy of the policy and an hf engine on it, and takes the trainer's weights only when the driver pushes
them (`load_weights(state, version)`), so what it samples with is always one whole policy version.

```python
group = WorkerGroup(pool, {"rollout": RoleSpec(RolloutWorker, kwargs=RolloutWorker.kwargs_from_config(cfg))})
group.rollout.load_weights(actor.full_state_dict(), 3)    # policy version 3 (three updates applied)
out = group.rollout.generate(prompts, SamplingParams(n=4)) # out.policy_version: 3 on every row
group.rollout.pop_report()  # per rank: its call stats and the (start, end) wall times of what it did
```

A rank runs its calls one after the other in the order the driver submitted them (one Ray actor per
rank), which is what makes the version bound of `rlkit.pipeline` hold: a `generate` submitted after a
`load_weights` samples with those weights.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.rollout.sampling import SamplingParams
from rlkit.workers import role


class RolloutWorker:
    """A frozen policy copy and an hf engine on it: generates with whatever weights were pushed last."""

    def __init__(self, ctx: WorkerContext, model: role.ModelSource, *, rollout: Any = None,
                 keep_unsharded: bool | None = None, **options: Any):
        """
        model: the policy's starting point (hub name, folder, or config + seed), as the actor's.
        rollout: the run's `RolloutConfig` (engine seed, KV cache, decode compilation) or None.
        keep_unsharded: see `HFEngine` (None: gather the weights per call when sharded over ranks).
        options: `ModelRole`'s (mixed_precision, attn_implementation, tokenizer_path, seed, shard_one_rank).
        """
        from rlkit.rollout.hf import HFEngine

        self.ctx = ctx
        self.core = role.ModelRole(model, kind="causal_lm", name="rollout", device=ctx.device, trainable=False,
                                   **options)
        self.engine = HFEngine(self.core.model, self.core.tokenizer, rank=ctx.rank,
                               seed=int(getattr(rollout, "seed", 0) or 0), keep_unsharded=keep_unsharded,
                               kv_cache=getattr(rollout, "kv_cache", "dynamic"),
                               compile_decode=getattr(rollout, "compile_decode", False))
        self.version = 0
        """Policy version of the weights held: the number of trainer updates they include."""
        self._spans: list[tuple[str, float, float]] = []  # (what, wall start, wall end) since the last report

    @register("split")
    def generate(self, batch: Batch, sampling: SamplingParams) -> Batch:
        """`sampling.n` samples per prompt row of this rank's share, as `HybridActor.generate` returns them, plus
        `policy_version` (B,): the version of the weights that drew them."""
        start = time.time()
        with self.core.residency.on_device(), self.core.stats.measure("generate", backward=False) as info:
            out = self.engine.generate(batch, sampling, group_offset=self.ctx.rank * len(batch))
            info["tokens"] = out.num_tokens()
            info["seq_len"] = float(out.prompt_ids.shape[1] + out.response_ids.shape[1])
        info["stats"].update({f"rollout/generate/{k}": v for k, v in self.engine.generate_stats.items()})
        self._spans.append(("generate", start, time.time()))
        return out.replace(policy_version=torch.full((len(out),), self.version, dtype=torch.long))

    @register("broadcast")
    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Take the trainer's full state dict (the actor's `full_state_dict()`) as policy version `version`."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        start = time.time()
        if not state:
            raise ValueError("rollout.load_weights: an empty state dict (the actor's full_state_dict is rank 0's)")
        set_model_state_dict(self.core.model.module, state, options=StateDictOptions(full_state_dict=True))
        self.engine.mark_stale()
        self.engine.sync()  # hf: nothing to move; keeps the engine's sync bookkeeping true
        self.version = int(version)
        self._spans.append(("load_weights", start, time.time()))
        return self.version

    @register("broadcast")
    def pop_report(self) -> dict[str, Any]:
        """This rank's call stats and `(what, start, end)` wall-clock spans since the last report."""
        spans, self._spans = self._spans, []
        return {"stats": self.core.stats.pop(), "spans": spans, "version": self.version}

    @register("broadcast")
    def sampler_state(self) -> dict[str, int]:
        """What a checkpoint needs to resume the pool's sampling exactly: the engine's call counter."""
        return {"calls": self.engine.calls, "version": self.version}

    @register("broadcast")
    def load_sampler_state(self, state: dict[str, int]) -> None:
        self.engine.calls = int(state["calls"])

    @staticmethod
    def kwargs_from_config(cfg: Any) -> dict[str, Any]:
        """Constructor kwargs from an `rlkit.config.Config` (the pool starts from the actor's model)."""
        kwargs = {"model": cfg.model.path, "rollout": cfg.rollout, **role.model_kwargs_from_config(cfg)}
        if cfg.rollout.gather_weights == "always":
            kwargs["keep_unsharded"] = True
        return kwargs


__all__ = ["RolloutWorker"]
