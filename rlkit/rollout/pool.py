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

import dataclasses
import time
from typing import Any

import torch

from rlkit.batch import Batch
from rlkit.cluster import WorkerContext, register
from rlkit.cluster.futures import Forwarded
from rlkit.rollout.sampling import SamplingParams
from rlkit.workers import role


class RolloutWorker:
    """A frozen policy copy and an hf engine on it: generates with whatever weights were pushed last."""

    def __init__(self, ctx: WorkerContext, model: role.ModelSource, *, rollout: Any = None,
                 keep_unsharded: bool | None = None, partial_segment: int = 0, **options: Any):
        """
        model: the policy's starting point (hub name, folder, or config + seed), as the actor's.
        rollout: the run's `RolloutConfig` (engine seed, KV cache, decode compilation) or None.
        keep_unsharded: see `HFEngine` (None: gather the weights per call when sharded over ranks).
        partial_segment: > 0: partial rollouts, generated in segments of this many new tokens, taking the
            weights of the mailbox (`set_mailbox`) between two segments (`rollout.partial`).
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
        self.partial_segment = int(partial_segment)
        self.mailbox: Any = None  # where the driver puts the newest weights (partial rollouts)
        self._spans: list[tuple[str, float, float]] = []  # (what, wall start, wall end) since the last report

    @register("split")
    def generate(self, batch: Batch, sampling: SamplingParams) -> Batch:
        """`sampling.n` samples per prompt row of this rank's share, as `HybridActor.generate` returns them, plus
        `policy_version` (B,): the version of the weights that drew them (partial rollouts: the first token's,
        and `token_policy_version` (B, T) each token's)."""
        start = time.time()
        with self.core.residency.on_device(), self.core.stats.measure("generate", backward=False) as info:
            if self.partial_segment:
                out = self._generate_in_segments(batch, sampling)
            else:
                out = self.engine.generate(batch, sampling, group_offset=self.ctx.rank * len(batch))
                out = out.replace(policy_version=torch.full((len(out),), self.version, dtype=torch.long))
            info["tokens"] = out.num_tokens()
            info["seq_len"] = float(out.prompt_ids.shape[1] + out.response_ids.shape[1])
        info["stats"].update({f"rollout/generate/{k}": v for k, v in self.engine.generate_stats.items()})
        self._spans.append(("generate", start, time.time()))
        return out

    def _generate_in_segments(self, batch: Batch, sampling: SamplingParams) -> Batch:
        """Partial rollouts: `partial_segment` new tokens at a time; between two segments the rows still going
        continue (their prompt + response so far as the new prompt, the sampled tokens kept as they are) on
        whatever weights the mailbox holds by then."""
        segment, total = self.partial_segment, sampling.max_new_tokens
        first = dataclasses.replace(sampling, max_new_tokens=min(segment, total),
                                    min_new_tokens=min(sampling.min_new_tokens, segment))
        out = self.engine.generate(batch, first, group_offset=self.ctx.rank * len(batch))
        ids = [r[m.bool()].tolist() for r, m in zip(out.response_ids, out.response_mask)]
        logprobs = [r[m.bool()].tolist() for r, m in zip(out.rollout_logprobs, out.response_mask)]
        versions = [[self.version] * len(row) for row in ids]
        start_versions = [self.version] * len(ids)
        done = min(segment, total)  # new tokens so far of every row still going (they all ran the full segment)
        live = [i for i, row in enumerate(ids) if self._going(row, done, sampling)]
        while live and done < total:
            self._take_mailbox_weights()
            budget = min(segment, total - done)
            params = dataclasses.replace(sampling, n=1, max_new_tokens=budget,
                                         min_new_tokens=min(max(0, sampling.min_new_tokens - done), budget))
            more = self.engine.generate(self._continuation_prompts(out, ids, live), params)
            for j, i in enumerate(live):
                valid = more.response_mask[j].bool()
                new = more.response_ids[j][valid].tolist()
                ids[i] += new
                logprobs[i] += more.rollout_logprobs[j][valid].tolist()
                versions[i] += [self.version] * len(new)
            done += budget
            live = [i for i in live if self._going(ids[i], done, sampling)]
        width = max(1, max(len(row) for row in ids))

        def padded(rows: list[list], fill, dtype) -> torch.Tensor:
            return torch.tensor([row + [fill] * (width - len(row)) for row in rows], dtype=dtype)

        text = None
        if self.engine.tokenizer is not None:
            text = [self.engine.tokenizer.decode(row, skip_special_tokens=True) for row in ids]
        return out.replace(response_ids=padded(ids, self.engine.pad_id, torch.long),
                           response_mask=padded([[1] * len(row) for row in ids], 0, torch.long),
                           rollout_logprobs=padded(logprobs, 0.0, torch.float32),
                           token_policy_version=padded(versions, 0, torch.long),
                           policy_version=torch.tensor(start_versions, dtype=torch.long), response_text=text)

    def _going(self, row: list[int], budget: int, sampling: SamplingParams) -> bool:
        """A row is still going when it used its whole budget and did not end (EOS, or a stop string)."""
        if len(row) < budget or (row and row[-1] in self.engine.eos_ids):
            return False
        if sampling.stop and self.engine.tokenizer is not None:
            text = self.engine.tokenizer.decode(row, skip_special_tokens=False)
            return not any(stop in text for stop in sampling.stop)
        return True

    def _continuation_prompts(self, out: Batch, ids: list[list[int]], live: list[int]) -> Batch:
        """(L, P') left-padded prompts: each live row's valid prompt tokens followed by its response so far."""
        rows = [torch.cat([out.prompt_ids[i][out.prompt_mask[i].bool()], torch.tensor(ids[i], dtype=torch.long)])
                for i in live]
        width = max(len(r) for r in rows)
        prompt_ids = torch.full((len(rows), width), self.engine.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            prompt_ids[j, width - len(r):], prompt_mask[j, width - len(r):] = r, 1
        return Batch.from_prompts(prompt_ids, prompt_mask)

    @register("broadcast")
    def set_mailbox(self, mailbox: Any) -> None:
        """Where partial rollouts look for newer weights between segments: a `WeightMailbox` (a Ray actor handle,
        or the object itself on the local backend)."""
        self.mailbox = mailbox

    def _take_mailbox_weights(self) -> None:
        if self.mailbox is None:
            return
        latest = self.mailbox.latest
        version, state = ray_get(latest.remote()) if hasattr(latest, "remote") else latest()
        if version > self.version:
            self._load(state.resolve() if isinstance(state, Forwarded) else state, version, "mailbox weights")

    @register("broadcast")
    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Take the trainer's full state dict (the actor's `full_state_dict()`) as policy version `version` (a
        version already taken from the mailbox is not loaded twice)."""
        if int(version) > self.version or not self.partial_segment:
            self._load(state, version, "load_weights")
        return self.version

    def _load(self, state: dict[str, torch.Tensor], version: int, what: str) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        start = time.time()
        if not state:
            raise ValueError("rollout.load_weights: an empty state dict (the actor's full_state_dict is rank 0's)")
        set_model_state_dict(self.core.model.module, state, options=StateDictOptions(full_state_dict=True))
        self.engine.mark_stale()
        self.engine.sync()  # hf: nothing to move; keeps the engine's sync bookkeeping true
        self.version = int(version)
        self._spans.append(("load_weights", start, time.time()))

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
        kwargs = {"model": cfg.model.path, "rollout": cfg.rollout, **role.model_kwargs_from_config(cfg),
                  "partial_segment": cfg.rollout.partial_segment if cfg.rollout.partial else 0}
        if cfg.rollout.gather_weights == "always":
            kwargs["keep_unsharded"] = True
        return kwargs


class WeightMailbox:
    """The newest weights pushed for partial rollouts: the driver `put`s, the pool reads `latest()` between
    segments (on Ray a small actor of its own, so that it answers while the pool is busy generating)."""

    def __init__(self):
        self.version, self.state = -1, None

    def put(self, version: int, state: Any) -> None:
        """`state`: the full state dict, or on Ray a `Forwarded` reference to it (never copied here)."""
        if version > self.version:
            self.version, self.state = int(version), state

    def latest(self) -> tuple[int, Any]:
        return self.version, self.state


def ray_get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


__all__ = ["RolloutWorker", "WeightMailbox"]
