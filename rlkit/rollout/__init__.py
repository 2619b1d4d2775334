"""Rollout engines: sample responses for a batch of prompts from the current policy.

- `SamplingParams` (`sampling.py`): n, temperature (0 = greedy), top-p, top-k, max new tokens,
  stop strings / ids, seed; and the log-prob convention every engine follows.
- `HFEngine` (`hf.py`): the embedded default, transformers on the actor's own FSDP2
  parameters, gathered in place for generation (no second copy of the weights).
- `HybridActor` (`hybrid.py`): the actor role that trains and generates (policy + engine).

Engines share one call shape, `engine.generate(prompts: Batch, params: SamplingParams) -> Batch`,
and expose `last_sync` (the weight sync's seconds / bytes / peak extra memory).
- `VLLMEngine` (`vllm_engine.py`): vLLM inside the actor's processes, weights streamed from the FSDP2
  shards in buckets (`weight_sync.py`); the optional extra (`HybridActor(..., engine="vllm")`).

Names are imported lazily so that `rlkit.rollout.sampling` does not pull in the workers.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "SamplingParams": "rlkit.rollout.sampling",
    "HFEngine": "rlkit.rollout.hf",
    "SyncStats": "rlkit.rollout.hf",
    "sample_responses": "rlkit.rollout.hf",
    "HybridActor": "rlkit.rollout.hybrid",
    "VLLMEngine": "rlkit.rollout.vllm_engine",
    "VLLMOptions": "rlkit.rollout.vllm_engine",
}

# engine name (RolloutConfig.engine) -> "module:class"
ENGINES = {"hf": "rlkit.rollout.hf:HFEngine", "vllm": "rlkit.rollout.vllm_engine:VLLMEngine"}

__all__ = [*_LAZY, "ENGINES", "engine_class"]


def engine_class(name: str) -> type:
    """The engine class for `RolloutConfig.engine` (raises naming the known engines)."""
    if name not in ENGINES:
        raise ValueError(f"rollout.engine={name!r}: known engines are {sorted(ENGINES)}")
    module, cls = ENGINES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlkit.rollout' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
