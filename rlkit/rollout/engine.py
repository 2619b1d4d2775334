"""`RolloutEngine`: the one shape every rollout engine has (hf, vllm), written down as a Protocol.

An engine samples responses from the actor's CURRENT weights. Where those weights live is
what separates the engines, and it is why weight sync is its own step:

- `HFEngine` generates on the actor's own parameters (FSDP2 shards, gathered in place per
  call). An optimizer step IS the engine's update: its `sync` moves 0 bytes.
- `VLLMEngine` keeps its own copy, laid out for inference: after every learn step the trainer's
  shards must be streamed into it (`rlkit.rollout.weight_sync`), which is time and bytes worth
  measuring on their own.

The life of the weights, as `HybridActor` drives it:

    engine built            -> stale (vLLM holds random weights until the first sync)
    actor.update(...)       -> engine.mark_stale()
    actor.sync_weights()    -> engine.sync(): streams (vllm) or nothing to move (hf); fresh
    actor.generate(...)     -> no sync when fresh; when still stale, `generate` syncs FIRST
                               (the fallback) and says so in its stats (`stale`, `sync_bytes`)

Collective engines (vLLM over several ranks) need every rank to call `sync` and `generate`
together; the Protocol makes no promise beyond what each engine documents.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any, Protocol, runtime_checkable

from rlkit.batch import Batch
from rlkit.rollout.sampling import SamplingParams

ENGINE_NAMES = ("hf", "vllm")
"""The engines `rollout.engine` can name; `HybridActor`'s builders implement exactly these (a test checks)."""


@runtime_checkable
class SyncReport(Protocol):
    """What one weight sync (or the weight preparation of one generate call) did, measured on this rank.

    `HFEngine` reports `rlkit.rollout.hf.SyncStats`, `VLLMEngine` `rlkit.rollout.weight_sync.WeightSyncStats`:
    dataclasses with these fields and more.
    """

    mode: str
    """How the weights got ready. hf: "in-place" for `sync` (nothing to move); for a generate's gather
    "gathered" / "per-layer" / "unsharded". vllm: "streamed" (buckets of full tensors) or "current"
    (already in sync: nothing moved)."""
    seconds: float
    """Wall time of the sync on this rank."""
    bytes: int
    """Bytes of weights this sync materialised for the engine (0 when nothing had to move)."""

    def as_dict(self, prefix: str = "sync") -> dict[str, float]:
        """The numeric fields as flat step metrics, `{f"{prefix}/seconds": ..., ...}` (no `mode`)."""
        ...


@runtime_checkable
class RolloutEngine(Protocol):
    """A rollout engine inside the actor's process: samples from the trainer's weights, syncs them on demand.

    Implemented by `rlkit.rollout.hf.HFEngine` and `rlkit.rollout.vllm_engine.VLLMEngine`; built by name
    (`rollout.engine`) in `rlkit.rollout.hybrid.HybridActor`.
    """

    name: str
    """The engine's name in `rollout.engine` ("hf", "vllm")."""
    calls: int
    """`generate` calls so far: part of the default sampler seed, saved in checkpoints so sampling resumes."""
    copies_weights: bool
    """True when the engine holds its own copy of the weights that `sync` fills from the trainer's
    parameters (these must then be on the device); False when it generates on them directly (hf)."""
    generate_stats: dict[str, float]
    """The last `generate` call's flat metrics: `engine_seconds`, `new_tokens`, `new_tokens_per_s`;
    `stale` (1.0 when it found the weights behind the trainer's and synced first, 0.0 after an explicit
    `sync`), `sync_bytes` / `sync_seconds` (what that fallback sync moved and took); and the engine's own
    `sync/*` measurements of `last_sync`."""
    last_sync: SyncReport | None
    """The last `generate` call's weight preparation, measured: hf the in-place gather of the shards, vllm the
    sync it ran (mode "current", 0 bytes, when the weights were synced already). None before the first call."""

    @property
    def stale(self) -> bool:
        """True when the trainer's weights may have changed since the last `sync` (the next `generate` syncs
        first). Starts True where the engine does not begin with the trainer's weights (vllm)."""
        ...

    def mark_stale(self) -> None:
        """The trainer's weights changed (an optimizer step, a checkpoint load): sync before generating."""
        ...

    def sync(self, *, force: bool = False) -> SyncReport:
        """Bring the engine's weights up to the trainer's; a no-op report (0 bytes) when they are current,
        unless `force`. Collective for engines that gather shards: every rank calls it together."""
        ...

    def generate(self, prompts: Batch, params: SamplingParams, *, group_offset: int = 0) -> Batch:
        """`params.n` responses per prompt row of `prompts` (B rows, left-padded `prompt_ids` (B, P)).

        Returns n * B rows, prompt-major, with the prompt fields, `group_id` (the batch's own, else
        `group_offset + i`), `response_ids` / `response_mask` / `rollout_logprobs` (n*B, T) and
        `response_text` with a tokenizer. Syncs first when `stale` (see `generate_stats`).
        """
        ...

    def close(self) -> None:
        """Free what the engine holds beyond the trainer's model (a no-op for hf). Call on every rank."""
        ...


def report_dict(report: SyncReport) -> dict[str, Any]:
    """A sync report as a plain dict (every field, `mode` included) to send back from a worker."""
    if is_dataclass(report) and not isinstance(report, type):
        return asdict(report)
    return {"mode": report.mode, "seconds": float(report.seconds), "bytes": int(report.bytes),
            **{k.rsplit("/", 1)[1]: v for k, v in report.as_dict().items()}}


__all__ = ["RolloutEngine", "SyncReport", "report_dict"]
