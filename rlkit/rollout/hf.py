"""The `hf` rollout engine: batched KV-cache sampling on the actor's OWN parameters.

It runs inside the actor's processes (HybridFlow's hybrid engine on FSDP2): no second
copy of the model is ever built. With W > 1 ranks the parameters are gathered in
place for the whole generation and freed afterwards:

    set_reshard_after_forward(False) + unshard() on every FSDP module   # the "sync"
    generate (each forward finds its parameters already gathered: no collective per token)
    set_reshard_after_forward(True) + reshard()                          # back to shards

(`unshard()` on the root alone leaves the decoder layers sharded, and with
reshard-after-forward on, every layer would be re-gathered at every token.)
With one rank the model is normally a plain module (`ShardedModel.sharded` False): the
engine reads its parameters as they are, and the sync is empty (mode "unsharded"). When a
one-rank model is FSDP-wrapped anyway (`shard=True`, or bf16 mixed precision), the shard
already IS the full parameter and FSDP2's "unshard" is a local copy
(`FSDPParamGroup.wait_for_unshard`), so gathering everything at once would hold a second
full copy: there the engine leaves FSDP's per-layer copy in place (one layer at a time,
freed after its forward) unless `keep_unsharded=True` is asked for.

Sampling is our own loop over transformers' forward with a KV cache (not `generate()`; it lives in
`rlkit.rollout.decode`): one place decides positions, EOS, stop strings and the log-prob
convention. With the default dynamic cache finished rows are dropped from the cache as they end.
"""

from __future__ import annotations

import contextlib
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import psutil
import torch
from torch import nn

from rlkit.batch import PROMPT_TEXT_FIELDS, Batch
from rlkit.rollout.decode import (  # the sampling loop lives in decode.py; these names stay importable from here
    KV_CACHES,
    Responses,
    StopStrings,
    cache_argument,
    check_left_padded,
    sample_responses,
    trim_left_padding,
)
from rlkit.rollout.sampling import SamplingParams, expand_indices, rank_seed

# ----------------------------------------------------------------------------- in-place gathering


@dataclass
class SyncStats:
    """How the hf engine's weights got ready: a generate call's in-place gather of the actor's shards, or
    `HFEngine.sync` (mode "in-place": nothing to move). A `rlkit.rollout.engine.SyncReport`."""

    mode: str
    """"gathered" (every FSDP module unsharded for the whole generation), "per-layer" (FSDP's own
    per-forward gather, one layer at a time; nothing is held, so the sync is empty), "unsharded"
    (a plain one-rank module: there is nothing to gather), or "in-place" (`HFEngine.sync`)."""
    seconds: float = 0.0
    """Wall time of the unshard (all-gathers included)."""
    bytes: int = 0
    """Bytes of unsharded parameter storage the gather materialised, measured on the tensors."""
    peak_extra_bytes: int = 0
    """Measured extra memory of the sync: CUDA max-allocated delta on GPU; on CPU the host RSS after the
    gather minus before (psutil), or the RSS high-water mark delta with `host_peak` (benchmarks). Memory
    the allocator reuses from earlier frees is not new RSS, so on CPU this can read low."""
    world_size: int = 1
    """Ranks the parameters are sharded over."""
    param_bytes_sharded: int = 0
    """Audit only (`HFEngine(audit_memory=True)`): parameter storage held before the sync (this rank's shards)."""
    param_bytes_peak: int = 0
    """Audit only: the most parameter storage (shards + everything gathered) alive at any module's forward
    during generation, measured on the tensors. `peak - sharded` is what generation added."""

    def as_dict(self, prefix: str = "sync") -> dict[str, float]:
        return {f"{prefix}/{k}": float(v) for k, v in asdict(self).items() if k != "mode"}


def parameter_storage_bytes(module: nn.Module, extra: Sequence[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages behind `module`'s parameters (a DTensor counts its local shard) and
    `extra` tensors, as allocated right now (an FSDP module's storage is 0 bytes while resharded)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *extra]:
        local = getattr(tensor, "_local_tensor", tensor)  # DTensor -> this rank's shard
        storage = local.untyped_storage()
        if storage.nbytes():
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@contextmanager
def audit_parameter_memory(fsdp_modules: Sequence[nn.Module], root: nn.Module, stats: SyncStats) -> Iterator[None]:
    """Record in `stats` the parameter storage held before generation and its peak during it.

    A forward pre-hook on every FSDP module (it runs after FSDP's own pre-hook, so the module's
    parameters are gathered by then) sums the distinct storages of all parameters and of the
    shards taken before the gather. Walks every parameter at every module call: for tests and
    benchmarks, not for training runs.
    """
    shards = [getattr(p, "_local_tensor", p) for p in root.parameters()]  # this rank's shards, kept alive by FSDP
    stats.param_bytes_sharded = parameter_storage_bytes(root, shards)
    stats.param_bytes_peak = stats.param_bytes_sharded

    def hook(module, args):
        stats.param_bytes_peak = max(stats.param_bytes_peak, parameter_storage_bytes(root, shards))

    handles = [module.register_forward_pre_hook(hook) for module in fsdp_modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _memory_now(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return psutil.Process().memory_info().rss


def reset_peak_memory(device: torch.device, host: bool = False) -> bool:
    """Start a new peak-memory window; True if a peak can then be read.

    CUDA: torch's max-allocated counter. CPU, only with `host=True`: the kernel's RSS
    high-water mark (`VmHWM`, reset by writing 5 to /proc/self/clear_refs on Linux). That
    counter is also the process's lifetime peak RSS (`getrusage`) which the monitor reports,
    so the engine leaves it alone during training; benchmarks turn it on.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return True
    if not host:
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_since_reset(device: torch.device, resettable: bool) -> int:
    """The peak since `reset_peak_memory` (which returned `resettable`); else the memory now."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if resettable:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    return _memory_now(device)  # no window: the RSS after the sync


@contextmanager
def gathered_for_generation(fsdp_modules: Sequence[nn.Module], root: nn.Module, device: torch.device,
                            world_size: int, keep_unsharded: bool, host_peak: bool = False) -> Iterator[SyncStats]:
    """Make a sharded model ready to generate; yield the sync's measurements; reshard on exit.

    `host_peak`: on CPU, measure the peak with the kernel's RSS high-water mark (catches the
    all-gather's transient buffers; resets the process's lifetime peak, see `reset_peak_memory`)
    instead of the RSS after the gather.

    `fsdp_modules`: every FSDP module, decoder layers first, root (`root`) last. On exit
    the layers get reshard-after-forward back on and the root off (FSDP2's defaults:
    the root keeps its parameters between forward and backward), then every module is
    resharded, which frees all gathered storage.
    """
    if not fsdp_modules:  # a plain module: its parameters are the full weights already
        yield SyncStats(mode="unsharded", world_size=world_size)
        return
    stats = SyncStats(mode="gathered" if keep_unsharded else "per-layer", world_size=world_size)
    for module in fsdp_modules:
        # Start from shards only: after a forward without backward (log-probs) FSDP2 leaves the
        # root's parameters gathered.
        module.reshard()
    try:
        if keep_unsharded:
            before = _memory_now(device)
            resettable = reset_peak_memory(device, host=host_peak)
            start = time.perf_counter()
            for module in fsdp_modules:
                module.set_reshard_after_forward(False, recurse=False)
            for module in fsdp_modules:
                module.unshard()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stats.seconds = time.perf_counter() - start
            # After unshard the module's parameters ARE the gathered tensors (DTensor shards are
            # no longer registered), so this counts what the gather allocated.
            stats.bytes = parameter_storage_bytes(root)
            stats.peak_extra_bytes = max(0, peak_memory_since_reset(device, resettable) - before)
        yield stats
    finally:
        for module in fsdp_modules:
            module.set_reshard_after_forward(module is not root, recurse=False)
        for module in fsdp_modules:
            module.reshard()


# ----------------------------------------------------------------------------- the engine


class HFEngine:
    """Generation with transformers on a `ShardedModel`'s own parameters (the embedded default engine).

    ```python
    engine = HFEngine(policy.model, policy.tokenizer, rank=ctx.rank, seed=cfg.rollout.seed)
    out = engine.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=16))
    engine.last_sync      # SyncStats of the in-place gather
    ```
    A `rlkit.rollout.engine.RolloutEngine`. Its weights ARE the trainer's parameters, so `sync` has
    nothing to move (0 bytes, mode "in-place"): the per-call gather above is generation's own cost,
    not a sync, and cannot be done ahead (training needs the memory back). The `stale` flag is kept
    all the same, so that a caller sees the same sync bookkeeping from every engine.
    """

    name = "hf"
    copies_weights = False  # generates on the trainer's own parameters

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        rank: int = 0,
        seed: int = 0,
        keep_unsharded: bool | None = None,
        eos_token_ids: Sequence[int] | None = None,
        pad_token_id: int | None = None,
        audit_memory: bool = False,
        kv_cache: str = "dynamic",
        compile_decode: bool = False,
    ):
        """
        model: an `rlkit.workers.sharded.ShardedModel` (causal LM): uses `module`, `fsdp_modules`,
            `device`, `world_size`, `config`.
        tokenizer: decodes `response_text` and stop strings (None: no text).
        rank, seed: this rank's sampler seed is derived from both (see `SamplingParams.seed`).
        keep_unsharded: gather every module for the whole generation. None = when world_size > 1
            (with one rank it would be a second full copy, see the module docstring).
        eos_token_ids / pad_token_id: default to the tokenizer's, then the model config's.
        audit_memory: also measure the parameter storage alive during generation (`SyncStats.param_bytes_*`;
            slows generation down, for tests and benchmarks).
        kv_cache, compile_decode: the sampling loop's KV cache ("dynamic" or "static") and whether its decode
            steps run `torch.compile`d (static only): see `rlkit.rollout.decode` and `rollout.kv_cache`.
        """
        if getattr(model, "kind", "causal_lm") != "causal_lm":
            raise ValueError(f"HFEngine needs a causal LM ShardedModel, got kind={model.kind!r}")
        self.model, self.tokenizer = model, tokenizer
        self.rank, self.seed = rank, seed
        world = getattr(model, "world_size", 1)
        self.keep_unsharded = world > 1 if keep_unsharded is None else keep_unsharded
        self.eos_ids = list(eos_token_ids) if eos_token_ids is not None else _eos_ids(tokenizer, model.config)
        if not self.eos_ids:
            raise ValueError("HFEngine: no EOS token id in the tokenizer or the model config; pass eos_token_ids")
        self.pad_id = pad_token_id if pad_token_id is not None else _pad_id(tokenizer, model.config, self.eos_ids)
        self.audit_memory = audit_memory
        if kv_cache not in KV_CACHES:
            raise ValueError(f"HFEngine: kv_cache={kv_cache!r}: must be one of {KV_CACHES}")
        if compile_decode and kv_cache != "static":
            raise ValueError("HFEngine: compile_decode needs kv_cache='static'")
        self.kv_cache, self.compile_decode = kv_cache, compile_decode
        self.calls = 0
        self.last_sync: SyncStats | None = None
        self.generate_stats: dict[str, float] = {}
        self._stale = False  # the engine starts on the trainer's parameters themselves

    # ---------------------------------------------------------------- weights

    @property
    def stale(self) -> bool:
        """`mark_stale` was called since the last `sync` (bookkeeping only: see the class docstring)."""
        return self._stale

    def mark_stale(self) -> None:
        self._stale = True

    def sync(self, *, force: bool = False) -> SyncStats:
        """Nothing to move: generation reads the trainer's parameters, so they are always current.
        Returns mode "in-place" with 0 seconds and 0 bytes, and clears `stale`. Not collective."""
        self._stale = False
        return SyncStats(mode="in-place", world_size=getattr(self.model, "world_size", 1))

    def close(self) -> None:
        """Nothing to free: the engine owns no weights or caches between calls."""

    # ---------------------------------------------------------------- public

    def generate(self, prompts: Batch, params: SamplingParams, *, group_offset: int = 0) -> Batch:
        """Sample `params.n` responses per prompt row.

        Returns n * B rows, prompt-major (rows i*n .. i*n+n-1 belong to prompt i), with the prompt
        fields, the text fields and `group_id` of their prompt (its own `group_id`, or
        `group_offset + i` when the batch has none), and the response fields `response_ids`,
        `response_mask`, `rollout_logprobs`, `response_text` (when there is a tokenizer).
        Other fields of `prompts` are not carried over. On a `stale` engine it runs `sync` first
        (recorded as `generate_stats["stale"]` = 1; it moves nothing here).
        """
        params.validate()
        if prompts.prompt_ids is None:
            raise ValueError(f"{self.name} engine: the Batch has no prompt_ids (fields set: {prompts.present_fields()})")
        stale = self._stale
        weight_sync = self.sync() if stale else None  # the fallback; trivial here (0 bytes)
        prompt_mask = prompts.prompt_mask if prompts.prompt_mask is not None else torch.ones_like(prompts.prompt_ids)
        check_left_padded(prompt_mask, f"{self.name} engine")
        group_id = prompts.group_id if prompts.group_id is not None else (
            torch.arange(len(prompts)) + group_offset)
        base = Batch(prompt_ids=prompts.prompt_ids, prompt_mask=prompt_mask, group_id=group_id.long(),
                     batch_size=[len(prompts)], **{name: getattr(prompts, name) for name in PROMPT_TEXT_FIELDS})
        rows = base.select(expand_indices(len(prompts), params.n))  # (n*B) rows, prompt-major

        device = self.model.device
        generator = None
        if not params.greedy:
            seed = params.seed if params.seed is not None else self.seed * 7919 + self.calls
            generator = torch.Generator(device=device).manual_seed(rank_seed(seed, self.rank))
        stops = StopStrings(self.tokenizer, params.stop)
        self.calls += 1

        module = self.model.module
        was_training = module.training
        module.eval()  # transformers turns the KV cache off under gradient checkpointing in train mode
        start = time.perf_counter()
        fsdp_modules, world = self.model.fsdp_modules, getattr(self.model, "world_size", 1)
        audit = SyncStats(mode="")
        try:
            with contextlib.ExitStack() as stack:
                if self.audit_memory:
                    for fsdp_module in fsdp_modules:
                        fsdp_module.reshard()  # the audit's baseline is the shards alone
                    stack.enter_context(audit_parameter_memory(fsdp_modules, module, audit))
                sync = stack.enter_context(gathered_for_generation(fsdp_modules, module, device, world,
                                                                   self.keep_unsharded))
                responses = sample_responses(
                    module, rows.prompt_ids.to(device), rows.prompt_mask.to(device), params,
                    eos_ids=self.eos_ids, pad_id=self.pad_id, generator=generator, stop_strings=stops,
                    kv_cache=self.kv_cache, compile_decode=self.compile_decode,
                )
        finally:
            module.train(was_training)
        seconds = time.perf_counter() - start
        sync.param_bytes_sharded, sync.param_bytes_peak = audit.param_bytes_sharded, audit.param_bytes_peak
        self.last_sync = sync
        new_tokens = int(responses.mask.sum())
        self.generate_stats = {
            "engine_seconds": seconds, "new_tokens": float(new_tokens),
            "new_tokens_per_s": new_tokens / seconds if seconds > 0 else 0.0,
            "forward_calls": float(responses.forward_calls), "stale": float(stale),
            "sync_bytes": float(weight_sync.bytes if weight_sync else 0),
            "sync_seconds": float(weight_sync.seconds if weight_sync else 0.0),
            **sync.as_dict(),  # sync/*: the in-place gather (generation's own cost, not a weight sync)
        }

        response_ids, response_mask = responses.ids.cpu(), responses.mask.cpu()
        text = None
        if self.tokenizer is not None:
            text = [self.tokenizer.decode(ids[m.bool()].tolist(), skip_special_tokens=True)
                    for ids, m in zip(response_ids, response_mask)]
        return rows.replace(response_ids=response_ids, response_mask=response_mask,
                            rollout_logprobs=responses.logprobs.cpu(), response_text=text)


def _eos_ids(tokenizer: Any, config: Any) -> list[int]:
    """EOS ids from the tokenizer, else the model's generation/config (may be an int or a list)."""
    candidates = [getattr(tokenizer, "eos_token_id", None), getattr(config, "eos_token_id", None)]
    for value in candidates:
        if value is not None:
            return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return []


def _pad_id(tokenizer: Any, config: Any, eos_ids: list[int]) -> int:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(config, "pad_token_id", None)):
        if value is not None:
            return int(value)
    return eos_ids[0]  # any valid id: padding is masked


__all__ = [
    "HFEngine",
    "Responses",
    "SyncStats",
    "StopStrings",
    "sample_responses",
    "gathered_for_generation",
    "audit_parameter_memory",
    "reset_peak_memory",
    "peak_memory_since_reset",
    "parameter_storage_bytes",
    "cache_argument",
    "check_left_padded",
    "trim_left_padding",
]
