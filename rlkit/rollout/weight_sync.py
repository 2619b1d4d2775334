"""Bucketed streaming of an FSDP2-sharded model's weights into a rollout engine (`rollout.sync_bucket_mb`).

A separate inference engine (vLLM) holds its own copy of the weights, so after every learn
step the actor's new parameters must reach it. The naive way gathers the full state dict
and loads it: a second full copy of the model, in one piece, beside the trainer's shards.
Here the parameters are gathered from the shards a bucket at a time, in the model's own
order, and handed to the engine as `(name, full tensor)` pairs from a generator:

    bucket k: flatten this rank's shards (padded to equal row counts) -> ONE all-gather
              -> unpack full tensors one by one -> the engine loads each and drops it
    (the gathered buffer is freed before bucket k+1 is gathered)

so the extra memory at any moment is one gathered bucket plus whatever the engine keeps
while it assembles one of its layers (vLLM buffers e.g. q/k/v until its fused `qkv_proj`
is complete). With one rank the shard IS the full parameter and is handed over as is
(nothing is gathered).

What a sync costs is measured, not computed: `WeightSyncStats` has the wall time, the
bytes streamed, the most gathered bytes alive at once (every buffer and unpacked tensor
is tracked until Python frees it, including while the engine still holds it), and the
measured peak extra memory of the process (CUDA max-allocated delta on GPU; on CPU the
peak RSS, from the kernel's high-water mark `VmHWM` reset just before the sync).

Collective: every rank must drain the same stream in the same order.
"""

from __future__ import annotations

import itertools
import math
import os
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

try:  # DTensor moved out of `_tensor` in torch 2.5; FSDP2 parameters are DTensors
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover - older torch
    from torch.distributed._tensor import DTensor, Shard

MiB = 1 << 20


# ----------------------------------------------------------------------------- what a sync reports


@dataclass
class WeightSyncStats:
    """One weight sync into a rollout engine (all sizes in bytes, measured on this rank).
    A `rlkit.rollout.engine.SyncReport`."""

    mode: str = "streamed"
    """"streamed" (full tensors gathered from the shards and loaded, bucket by bucket) or "current"
    (the engine already held these weights: nothing moved, every number below 0 but `world_size`)."""
    seconds: float = 0.0
    """Wall time of the whole sync: gathers plus the engine's loading."""
    bytes: int = 0
    """Bytes of full tensors streamed into the engine (the model's size in the streamed dtype)."""
    comm_bytes: int = 0
    """Bytes this rank received over the collective (the other ranks' parts of each bucket, padding included)."""
    buckets: int = 0
    """All-gathers run (0 with one rank: nothing is gathered)."""
    bucket_limit: int = 0
    """The bucket size asked for (`rollout.sync_bucket_mb`); a single tensor larger than it is its own bucket."""
    largest_bucket: int = 0
    """Bytes of the largest gathered bucket."""
    peak_gathered_bytes: int = 0
    """Most bytes of gathered buffers and unpacked tensors alive at once (tracked until freed, also while the
    engine holds them)."""
    peak_extra_bytes: int = 0
    """Measured peak extra memory of the process during the sync: CUDA max-allocated delta on GPU, peak RSS
    (VmHWM) minus RSS before on CPU."""
    world_size: int = 1
    """Ranks the parameters are sharded over."""
    synced: int = 1
    """1 if this call streamed the weights, 0 if they were already current (all other fields 0)."""

    def as_dict(self, prefix: str = "sync") -> dict[str, float]:
        """Flat float metrics, e.g. `{"sync/seconds": ..., "sync/bytes": ...}` for the step stats (no `mode`)."""
        return {f"{prefix}/{k}": float(v) for k, v in asdict(self).items() if k != "mode"}


# ----------------------------------------------------------------------------- pure layout helpers


def shard_rows(rows: int, world: int, rank: int) -> int:
    """Rows of a dim-0 `Shard` that `rank` holds (torch.chunk semantics, FSDP2's): ceil(rows/W) for the first
    ranks, the remainder next, then 0."""
    per = math.ceil(rows / world) if rows else 0
    return max(0, min(per, rows - rank * per))


def padded_numel(shape: Sequence[int], world: int) -> int:
    """Elements of one rank's part of a dim-0 sharded tensor, padded to ceil(rows/W) rows."""
    if len(shape) == 0:
        return 1  # a scalar is never sharded
    row = math.prod(shape[1:])
    return math.ceil(shape[0] / world) * row


def plan_buckets(sizes: Sequence[int], keys: Sequence[Any], limit: int) -> list[list[int]]:
    """Group consecutive items into buckets of at most `limit` bytes, never mixing `keys` (dtypes).

    sizes: bytes of each item (gathered size); an item larger than `limit` gets a bucket of its own.
    Returns the item indices of each bucket, in order.
    """
    if limit <= 0:
        raise ValueError(f"bucket size must be > 0 bytes, got {limit}")
    buckets: list[list[int]] = []
    used = 0
    for i, (size, key) in enumerate(zip(sizes, keys)):
        if buckets and keys[buckets[-1][0]] == key and used + size <= limit:
            buckets[-1].append(i)
            used += size
        else:
            buckets.append([i])
            used = size
    return buckets


# ----------------------------------------------------------------------------- tracking and measuring


class LiveBytes:
    """Bytes of the registered tensors still alive, and the most alive at once.

    A tensor is counted from `add` until Python frees it (`weakref.finalize`), so tensors a
    consumer keeps (vLLM buffers a layer's weights until it is complete) stay counted.
    """

    def __init__(self):
        self.current = 0
        self.peak = 0
        self._finalizers: dict[int, weakref.finalize] = {}

    def add(self, tensor: torch.Tensor) -> torch.Tensor:
        size = tensor.numel() * tensor.element_size()
        self.current += size
        self.peak = max(self.peak, self.current)
        self._finalizers[id(tensor)] = weakref.finalize(tensor, self._release, size, id(tensor))
        return tensor

    def release(self, tensor: torch.Tensor) -> None:
        """Count `tensor` as freed now, though other references may keep it alive a little longer.

        For buffers the caller is done with but torch still holds for an unspecified moment: the gloo
        backend's worker thread keeps a collective's output tensor until that thread next runs, which
        on a loaded CI machine came after later buckets were gathered (262144 bytes counted, bound 230144).
        """
        finalizer = self._finalizers.pop(id(tensor), None)
        if finalizer is not None:
            finalizer()  # runs _release once; the later garbage collection then does nothing

    def _release(self, size: int, key: int) -> None:
        self.current -= size
        self._finalizers.pop(key, None)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Measured peak extra memory of this process over a `with` block.

    CUDA: `max_memory_allocated` minus the allocation before. CPU: the highest of RSS sampled at
    every `sample()` call (the weight stream calls it after every tensor) and the kernel's RSS
    high-water mark, reset on entry, which also sees peaks between samples. Both, because the mark
    is not trustworthy everywhere: CI's machine reported no extra memory for a touched 64 MiB
    tensor freed inside the block, which only the mark could have seen. RSS counts whole pages and glibc
    may reuse heap memory freed earlier, so on CPU it is a measurement of what the process took.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.before = 0
        self.sampled = 0
        self.hwm_ok = False
        self.extra = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            self.before = _rss_bytes()
            self.hwm_ok = _reset_hwm()
        self.sampled = self.before
        return self

    def sample(self) -> None:
        if self.device.type != "cuda":
            self.sampled = max(self.sampled, _rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _hwm_bytes() if self.hwm_ok else None
            peak = max(self.sampled, _rss_bytes(), hwm or 0)
        self.extra = max(0, peak - self.before)


# ----------------------------------------------------------------------------- the stream


def _is_dim0_sharded(param: torch.Tensor) -> bool:
    return (isinstance(param, DTensor) and param.device_mesh.ndim == 1
            and tuple(param.placements) == (Shard(0),) and param.dim() > 0)


def _bytes_of(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def stream_full_parameters(
    named_params: Iterable[tuple[str, torch.Tensor]],
    bucket_bytes: int,
    *,
    dtype: torch.dtype | None = None,
    tracker: LiveBytes | None = None,
    stats: WeightSyncStats | None = None,
    on_step: Callable[[], None] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield `(name, full tensor)` for every parameter, gathering dim-0 shards bucket by bucket.

    named_params: e.g. `model.named_parameters()` of an FSDP2 model (DTensors sharded on dim 0 over a 1-D
        mesh); plain tensors (one rank) are yielded as they are, other DTensor layouts via `full_tensor()`.
    bucket_bytes: most bytes gathered by one all-gather (a larger single tensor is gathered alone).
    dtype: stream in this dtype (e.g. the engine's bf16: half the bytes moved); None keeps each tensor's.
    tracker / stats / on_step: measurement hooks (gathered bytes alive, totals, a call after every tensor).

    Collective over the parameters' process group: every rank must consume the whole stream. The
    yielded tensors are fresh (never views of the trainer's parameters, except with one rank and the
    same dtype, where the shard itself is the full tensor): the consumer may keep them.
    """
    params = [(name, p.detach()) for name, p in named_params]
    out_dtypes = [dtype or p.dtype for _, p in params]
    worlds = [p.device_mesh.size() if _is_dim0_sharded(p) else 1 for _, p in params]
    sizes = [_bytes_of([padded_numel(p.shape, w) * w], d) for (_, p), w, d in zip(params, worlds, out_dtypes)]
    # A bucket never mixes dtypes, gathered and local tensors, or meshes (one flat buffer, one collective).
    keys = [(d, w, id(p.device_mesh) if w > 1 else None) for (_, p), w, d in zip(params, worlds, out_dtypes)]
    tracker = tracker if tracker is not None else LiveBytes()
    step = on_step or (lambda: None)

    for bucket in plan_buckets(sizes, keys, bucket_bytes):
        world = worlds[bucket[0]]
        if world == 1:
            for i in bucket:
                name, p = params[i]
                if _is_dim0_sharded(p):
                    full = p.to_local()  # a one-rank mesh: the shard is the whole tensor
                else:
                    full = p.full_tensor() if isinstance(p, DTensor) else p  # other layouts: torch gathers
                if full.dtype != out_dtypes[i]:
                    full = tracker.add(full.to(out_dtypes[i]))
                elif isinstance(p, DTensor) and not _is_dim0_sharded(p):
                    tracker.add(full)  # a fresh gathered copy
                if stats is not None:
                    stats.bytes += full.numel() * full.element_size()
                yield name, full
                del full
                step()
            continue
        yield from _gather_bucket([params[i] for i in bucket], out_dtypes[bucket[0]], tracker, stats, step)


def _gather_bucket(
    items: list[tuple[str, DTensor]],
    dtype: torch.dtype,
    tracker: LiveBytes,
    stats: WeightSyncStats | None,
    step: Callable[[], None],
) -> Iterator[tuple[str, torch.Tensor]]:
    """One all-gather for a bucket of dim-0 sharded DTensors on one mesh, then the full tensors one by one."""
    mesh = items[0][1].device_mesh
    group, world, rank = mesh.get_group(), mesh.size(), mesh.get_local_rank()
    device = items[0][1].to_local().device
    chunks = [padded_numel(p.shape, world) for _, p in items]  # this rank's padded part of each tensor
    offsets = [0, *itertools.accumulate(chunks)]
    # (W * S,): rank r's padded parts at [r*S, (r+1)*S). This rank writes its own part in place and the
    # gather fills the others (an in-place all-gather: no separate send buffer).
    gathered = tracker.add(torch.empty(world * offsets[-1], dtype=dtype, device=device))
    send = gathered[rank * offsets[-1]:(rank + 1) * offsets[-1]]  # (S,) view
    for (name, p), start in zip(items, offsets):
        local = p.to_local()
        expected = shard_rows(p.shape[0], world, rank)
        if local.shape[0] != expected:
            raise RuntimeError(f"weight sync: parameter {name!r} has {local.shape[0]} rows on rank {rank}, expected "
                               f"{expected} of {p.shape[0]} (dim-0 chunks over {world} ranks)")
        send[start:start + local.numel()].copy_(local.reshape(-1))
    dist.all_gather_into_tensor(gathered, send, group=group)
    del send
    if stats is not None:
        stats.buckets += 1
        stats.comm_bytes += (world - 1) * offsets[-1] * gathered.element_size()
        stats.largest_bucket = max(stats.largest_bucket, gathered.numel() * gathered.element_size())
    parts = gathered.view(world, offsets[-1])  # (W, S): rank r's padded parts, in bucket order
    for (name, p), start, chunk in zip(items, offsets, chunks):
        rows, rest = p.shape[0], tuple(p.shape[1:])
        per_rank = parts[:, start:start + chunk].view(world, -1, *rest)  # (W, ceil(rows/W), *rest)
        full = tracker.add(torch.cat([per_rank[r, :shard_rows(rows, world, r)] for r in range(world)]))
        del per_rank
        if stats is not None:
            stats.bytes += full.numel() * full.element_size()
        yield name, full
        del full
        step()
    tracker.release(gathered)  # the collective's worker thread may still hold it: see LiveBytes.release
    del parts, gathered


@contextmanager
def measured_sync(device: torch.device, world_size: int,
                  bucket_bytes: int) -> Iterator[tuple[WeightSyncStats, LiveBytes, PeakMemory]]:
    """Time and measure one sync: yields (stats to fill, the gathered-bytes tracker, the memory meter)."""
    stats = WeightSyncStats(world_size=world_size, bucket_limit=bucket_bytes)
    tracker = LiveBytes()
    start = time.perf_counter()
    with PeakMemory(device) as meter:
        yield stats, tracker, meter
    stats.seconds = time.perf_counter() - start
    stats.peak_gathered_bytes = tracker.peak
    stats.peak_extra_bytes = meter.extra


def stream_model(
    module: nn.Module,
    load: Callable[[Iterator[tuple[str, torch.Tensor]]], Any],
    *,
    bucket_mb: float,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> WeightSyncStats:
    """Stream `module`'s parameters into `load(iterator)` in buckets of `bucket_mb` MiB; return the measurements.

    `load` consumes the iterator (e.g. vLLM's `reload_weights`); whatever it leaves unconsumed is drained
    here, so every rank runs every collective even if a loader stops early. Collective.
    """
    bucket_bytes = max(1, int(bucket_mb * MiB))
    world = dist.get_world_size() if dist.is_initialized() else 1
    with measured_sync(device, world, bucket_bytes) as (stats, tracker, meter):
        stream = stream_full_parameters(module.named_parameters(), bucket_bytes, dtype=dtype, tracker=tracker,
                                        stats=stats, on_step=meter.sample)
        from rlkit.workers.lora import is_lora_model, merge_lora_weights

        if is_lora_model(module):  # the engine takes plain weights: W + s B A under the base model's names
            stream = merge_lora_weights(stream, lora_scaling(module))
        load(stream)
        for _ in stream:  # drain: the remaining gathers are collectives the other ranks run too
            pass
    return stats


def lora_scaling(module: nn.Module) -> float:
    """alpha / r of a PEFT model's (one) LoRA adapter."""
    config = module.peft_config["default"]
    return float(config.lora_alpha) / float(config.r)


__all__ = [
    "WeightSyncStats",
    "LiveBytes",
    "PeakMemory",
    "shard_rows",
    "padded_numel",
    "plan_buckets",
    "stream_full_parameters",
    "stream_model",
    "measured_sync",
    "MiB",
]
