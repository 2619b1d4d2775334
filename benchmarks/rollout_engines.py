"""Rollout engines: generation throughput, and the cost of the weight sync against a naive one.

    .venv/bin/python -m benchmarks.rollout_engines                       # qwen2-tiny and qwen2-9m, 2 ray ranks
    .venv/bin/python -m benchmarks.rollout_engines --presets qwen2-1m --ranks 1 --repeats 5 --json out.json

For every model preset, one run (one worker group of `--ranks` hybrid actors) measures:

- hf engine: new tokens per second of `HybridActor.generate` (prompts "a+b=", n samples each,
  up to `--max-new-tokens`), timed on the driver, median over `--repeats` calls after one
  warm-up call; then its "sync" as the engine measures it (`SyncStats`, the same gather
  `generate` starts with, run alone): the in-place unshard's seconds, bytes of parameters
  gathered, measured peak extra memory (on CPU the RSS high-water mark during the sync
  minus the RSS before, with free heap memory returned to the OS first, see `exact_rss`;
  CUDA max-allocated delta on GPU);
- naive sync, the baseline HybridFlow removes: the full state dict gathered to rank 0
  (`get_model_state_dict(full_state_dict=True)`) and loaded into a SECOND model that lives
  beside the trainer (what a separate inference engine needs). Same measurements, plus the
  resident bytes of that second model, which the hf engine never allocates.

The ratios (hf / naive) come from the same run, so machine load affects both sides alike
(run the whole script twice to see the spread). With one rank the hf engine does not gather
at all (the shard is the whole weight; see `rlkit.rollout.hf`), so its sync columns are 0.

Engines: `ENGINES` maps a name to a function that runs one preset; "vllm" is the hook for the
vLLM engine (`rlkit.rollout` has no vLLM engine yet, so its row says so and nothing runs).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import psutil
import torch

from rlkit.batch import Batch
from rlkit.cluster import ClusterRuntime, ResourcePool, RoleSpec, WorkerContext, WorkerGroup, register
from rlkit.rollout.hf import peak_memory_since_reset, reset_peak_memory
from rlkit.rollout.hybrid import HybridActor
from rlkit.rollout.sampling import SamplingParams


class BenchActor:
    """A `HybridActor` plus the naive sync it is compared with (benchmark-only role, by composition)."""

    def __init__(self, ctx: WorkerContext, **kwargs: Any):
        self.ctx = ctx
        self.hybrid = HybridActor(ctx, **kwargs)
        self.second_model = None  # the naive baseline's inference copy, built on the first naive sync

    @register("split")
    def generate(self, batch: Batch, sampling: dict | None = None) -> Batch:
        return self.hybrid.generate(batch, sampling)

    @register("broadcast")
    def last_sync(self) -> dict | None:
        return self.hybrid.last_sync()

    @register("rank0")
    def num_params(self) -> int:
        return int(self.hybrid.policy.model.num_params)

    @register("broadcast")
    def exact_rss(self) -> bool:
        """Make RSS deltas count every tensor allocation in this process from now on (see `exact_rss`)."""
        return exact_rss()

    @register("broadcast")
    def hf_sync(self) -> dict[str, Any]:
        """The engine's sync alone. hf: gather in place as `generate` does, measure, reshard. vllm: stream the
        shards into vLLM bucket by bucket (forced: the weights have not changed since the last generate)."""
        from dataclasses import asdict

        from rlkit.rollout.hf import gathered_for_generation

        engine, model = self.hybrid.engine, self.hybrid.policy.model
        gc.collect()
        if engine.name == "vllm":
            return {**asdict(engine.sync_weights(force=True)), "mode": f"streamed {engine.options.bucket_mb:g} MiB"}
        exact_rss()
        with gathered_for_generation(model.fsdp_modules, model.module, model.device, model.world_size,
                                     engine.keep_unsharded, host_peak=True) as stats:
            pass
        return asdict(stats)

    @register("broadcast")
    def naive_sync(self) -> dict[str, float]:
        """Gather the full state dict on rank 0 and load it into a second model there (all ranks call)."""
        from transformers import AutoModelForCausalLM

        model = self.hybrid.policy.model
        if self.ctx.rank == 0 and self.second_model is None:
            self.second_model = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32)
        gc.collect()
        exact_rss()
        before = psutil.Process().memory_info().rss
        resettable = reset_peak_memory(model.device, host=True)
        start = time.perf_counter()
        state = model.full_state_dict()  # collective: rank 0 gets every tensor, the others {}
        moved = sum(t.numel() * t.element_size() for t in state.values())
        if self.ctx.rank == 0:
            self.second_model.load_state_dict(state, strict=False)
        seconds = time.perf_counter() - start
        peak = peak_memory_since_reset(model.device, resettable)
        del state
        resident = 0
        if self.second_model is not None:
            resident = sum(p.numel() * p.element_size() for p in self.second_model.parameters())
        return {"seconds": seconds, "bytes": float(moved), "peak_extra_bytes": float(peak - before),
                "second_copy_bytes": float(resident)}


def exact_rss() -> bool:
    """Make RSS deltas count allocations in this process: True if it could (glibc only).

    glibc keeps freed heap memory resident and reuses it, so an RSS delta misses allocations
    that fit in memory freed earlier (a previous call's gathered parameters, KV caches). Here
    the mmap threshold is fixed at 64 KiB (every larger tensor becomes its own mapping,
    unmapped when freed) and the free heap pages are returned to the OS (`malloc_trim`), so
    what a sync allocates shows up as new resident pages. Fixed thresholds make allocation
    slower (generation ~1.5x here): call it after the throughput has been measured. Call it
    again before each measurement (it trims again).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(-3, 64 << 10))  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
        return ok
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- one preset, one engine


def make_prompts(tokenizer: Any, count: int, seed: int = 0) -> Batch:
    from rlkit.data import encode_prompts

    rng = random.Random(seed)
    texts = [f"{rng.randint(0, 99)}+{rng.randint(0, 99)}=" for _ in range(count)]
    ids, mask = encode_prompts(tokenizer, texts, 16)
    return Batch.from_prompts(ids, mask, prompt_text=texts)


def bench_hf(model_dir: Path, args: argparse.Namespace, engine: str = "hf") -> dict[str, Any]:
    """One worker group on `model_dir`: the engine's tokens/s and sync stats, then the naive sync."""
    from rlkit.data import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer(model_dir)
    prompts = make_prompts(tokenizer, args.prompts)
    sampling = {"n": args.n, "temperature": 1.0, "max_new_tokens": args.max_new_tokens}
    keep = {"auto": None, "on": True, "off": False}[args.keep_unsharded]
    kwargs = {"model": str(model_dir), "rollout": sampling, "keep_unsharded": keep}
    if engine == "vllm":
        kwargs = {"model": str(model_dir), "rollout": sampling, "engine": "vllm",
                  "vllm": {"bucket_mb": args.sync_bucket_mb, "kv_cache_gb": 0.25}}
    backend = "local" if args.ranks == 1 and args.local else "ray"
    pool = ResourcePool(nodes=1, devices_per_node=args.ranks) if backend == "ray" else None
    group = WorkerGroup(pool, {"actor": RoleSpec(BenchActor, kwargs=kwargs)}, backend=backend,
                        threads_per_worker=args.threads)
    try:
        group.actor.generate(prompts, {"seed": 0})  # warm-up: lazy init, allocator
        rates = []
        for i in range(args.repeats):
            start = time.perf_counter()
            out = group.actor.generate(prompts, {"seed": i + 1})
            rates.append(float(out.response_mask.sum()) / (time.perf_counter() - start))
        exact = all(group.actor.exact_rss())
        syncs, naive = [], []
        for _ in range(args.repeats):  # interleaved, so drifting load hits both sides alike
            syncs.append(group.actor.hf_sync()[0])
            naive.append(group.actor.naive_sync()[0])
        params = group.actor.num_params()
    finally:
        group.close()
        if pool is not None:
            pool.close()

    def median(rows: list[dict], key: str) -> float:
        return statistics.median(float(r[key]) for r in rows)

    hf_sync = {k: median(syncs, k) for k in ("seconds", "bytes", "peak_extra_bytes")}
    naive_sync = {k: median(naive, k) for k in ("seconds", "bytes", "peak_extra_bytes", "second_copy_bytes")}
    return {
        "params": params,
        "ranks": args.ranks,
        "sync_mode": syncs[-1].get("mode", ""),
        "exact_rss": exact,
        "tokens_per_s": statistics.median(rates),
        "tokens_per_s_all": rates,
        "hf_sync": hf_sync,
        "naive_sync": naive_sync,
    }


def bench_vllm(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The vLLM engine (`HybridActor(engine="vllm")`): same keys as `bench_hf`; its sync is the bucketed stream
    from the FSDP shards (`--sync-bucket-mb`). Runs where vLLM imports (.venv-vllm on CPU hosts)."""
    return vllm_tokens_per_s(model_dir, args)


def vllm_tokens_per_s(model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """tokens/s of the vLLM engine on `model_dir` plus its sync measurements (`bench_hf`'s keys); raises
    NotImplementedError (a skipped row) where vLLM is missing or cannot run the model (CPU head sizes)."""
    from transformers import AutoConfig

    from rlkit.rollout.vllm_engine import check_head_size, vllm_import_error

    reason = vllm_import_error()
    if reason is not None:
        raise NotImplementedError(f"vLLM is not importable here ({reason}); run in .venv-vllm")
    try:
        check_head_size(AutoConfig.from_pretrained(model_dir), on_cpu=not torch.cuda.is_available())
    except ValueError as err:
        raise NotImplementedError(str(err)) from err
    return bench_hf(model_dir, args, engine="vllm")


ENGINES: dict[str, Callable[[Path, argparse.Namespace], dict[str, Any]]] = {"hf": bench_hf, "vllm": bench_vllm}


# ----------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b else "n/a"


def print_table(results: dict[str, dict[str, Any]]) -> None:
    mib = float(1 << 20)
    print()
    print(f"{'preset':<12} {'engine':<6} {'params':>9} {'ranks':>5} {'tokens/s':>9} | "
          f"{'sync s':>8} {'naive s':>8} {'ratio':>6} | {'MiB':>7} {'naive':>7} {'ratio':>6} | "
          f"{'peak MiB':>8} {'naive':>7} {'ratio':>6} | {'2nd copy MiB':>12}")
    for key, row in results.items():
        preset, engine = key.split("/")
        if "error" in row:
            print(f"{preset:<12} {engine:<6} {row['error']}")
            continue
        hf, naive = row["hf_sync"], row["naive_sync"]
        print(
            f"{preset:<12} {engine:<6} {row['params'] / 1e6:>8.2f}M {row['ranks']:>5} {row['tokens_per_s']:>9.1f} | "
            f"{hf['seconds']:>8.4f} {naive['seconds']:>8.4f} {ratio(hf['seconds'], naive['seconds']):>6} | "
            f"{hf['bytes'] / mib:>7.2f} {naive['bytes'] / mib:>7.2f} {ratio(hf['bytes'], naive['bytes']):>6} | "
            f"{hf['peak_extra_bytes'] / mib:>8.2f} {naive['peak_extra_bytes'] / mib:>7.2f} "
            f"{ratio(hf['peak_extra_bytes'], naive['peak_extra_bytes']):>6} | "
            f"{naive['second_copy_bytes'] / mib:>12.2f}"
        )
    print("\nsync: hf = in-place unshard per rank (mode 'gathered'; 0 with one rank, mode 'per-layer'); naive = full "
          "state dict to rank 0 + load into a second model (rank 0's numbers). MiB moved per rank; peak = measured "
          "extra memory during the sync (RSS high-water mark delta on CPU, max-allocated delta on CUDA); "
          "'2nd copy' = the naive side's resident inference model (hf: none).")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="qwen2-tiny,qwen2-9m", help="comma-separated rlkit.data tiny presets")
    parser.add_argument("--engines", default="hf,vllm", help=f"comma-separated, of {sorted(ENGINES)}")
    parser.add_argument("--ranks", type=int, default=2, help="data-parallel ranks of the actor (ray)")
    parser.add_argument("--local", action="store_true", help="with --ranks 1: the local backend instead of ray")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--keep-unsharded", choices=("auto", "on", "off"), default="auto",
                        help="hf engine: gather every module for the whole generation (auto: when ranks > 1)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sync-bucket-mb", type=float, default=64.0, help="vllm engine: weight sync bucket size")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    from rlkit.data import save_tiny_model

    runtime = None
    if not (args.ranks == 1 and args.local):
        runtime = ClusterRuntime(num_cpus=max(4, args.ranks)).start()
    results: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="rlkit-rollout-bench-") as tmp:
            for preset in args.presets.split(","):
                model_dir = save_tiny_model(preset, Path(tmp) / preset, seed=0)
                for engine in args.engines.split(","):
                    if engine not in ENGINES:
                        raise SystemExit(f"--engines: unknown engine {engine!r}; known: {sorted(ENGINES)}")
                    try:
                        results[f"{preset}/{engine}"] = ENGINES[engine](model_dir, args)
                    except NotImplementedError as err:
                        results[f"{preset}/{engine}"] = {"error": f"skipped: {err}"}
                    print(f"{preset}/{engine}: {json.dumps(results[f'{preset}/{engine}'])}", flush=True)
    finally:
        if runtime is not None:
            runtime.close()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
