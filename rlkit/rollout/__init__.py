"""Rollout engines: sample responses for a batch of prompts from the current policy.

- `RolloutEngine` (`engine.py`): the Protocol every engine implements: `generate(prompts, params,
  *, group_offset=0) -> Batch`, `sync(*, force=False) -> SyncReport` (bring the engine's weights up
  to the trainer's: seconds, bytes, mode), `mark_stale()` / `stale`, `generate_stats` and `last_sync`
  (the last generate's measurements), `close()`.
- `SamplingParams` (`sampling.py`): n, temperature (0 = greedy), top-p, top-k, max new tokens,
  stop strings / ids, seed; and the log-prob convention every engine follows.
- `HFEngine` (`hf.py`): the embedded default, transformers on the actor's own FSDP2
  parameters, gathered in place for generation (no second copy of the weights; its sync moves nothing).
- `VLLMEngine` (`vllm_engine.py`): vLLM inside the actor's processes, weights streamed from the FSDP2
  shards in buckets (`weight_sync.py`); the optional extra (`HybridActor(..., engine="vllm")`).
- `HybridActor` (`hybrid.py`): the actor role that trains and generates (policy + engine, built from
  the engine name), with the explicit `sync_weights()` step between `update` and `generate`.

Names are imported lazily so that `rlkit.rollout.sampling` does not pull in the workers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RolloutEngine": "rlkit.rollout.engine",
    "SyncReport": "rlkit.rollout.engine",
    "SamplingParams": "rlkit.rollout.sampling",
    "HFEngine": "rlkit.rollout.hf",
    "SyncStats": "rlkit.rollout.hf",
    "sample_responses": "rlkit.rollout.hf",
    "HybridActor": "rlkit.rollout.hybrid",
    "VLLMEngine": "rlkit.rollout.vllm_engine",
    "VLLMOptions": "rlkit.rollout.vllm_engine",
    "WeightSyncStats": "rlkit.rollout.weight_sync",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlkit.rollout' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
