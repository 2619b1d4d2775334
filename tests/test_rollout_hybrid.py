"""The hybrid actor (policy + hf engine on the same FSDP2 parameters) on 1 rank (local backend)
and 2 ranks (ray, gloo): weights in sync after a learn step, greedy = exported model's
`generate()`, no second copy of the weights (measured), group layout, seeds; the explicit
weight sync step (`sync_weights`) and generate's fallback sync on a stale engine."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlkit.algos.core import aggregate
from rlkit.batch import Batch
from rlkit.cluster import ResourcePool, RoleSpec, WorkerGroup
from rlkit.data import encode_prompts, load_model_and_tokenizer
from rlkit.rollout.hf import parameter_storage_bytes
from rlkit.rollout.hybrid import HybridActor
from rlkit.rollout.sampling import SamplingParams

TEXTS = ["1+2=", "37+48=", "5*6+7=", "99-1=", "hello", "7", "12*3="]  # 7: odd, so 2 ranks pad
ROLLOUT = {"n": 2, "temperature": 0.8, "max_new_tokens": 8, "seed": 0}


def actor_kwargs(model_dir, **extra) -> dict:
    return {"model": str(model_dir), "optim": {"lr": 1e-2}, "micro_batch_size": 4, "rollout": ROLLOUT,
            "audit_memory": True, **extra}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the local backend runs in this process; tiny models are fastest on one thread
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_model_and_tokenizer(tiny_model_dir)[1]


@pytest.fixture(scope="module")
def prompts(tokenizer) -> Batch:
    ids, mask = encode_prompts(tokenizer, TEXTS, 16)
    return Batch.from_prompts(ids, mask, prompt_text=TEXTS, ground_truth=list(range(len(TEXTS))))


@pytest.fixture(scope="module")
def one_rank(tiny_model_dir):
    """One rank with FSDP2 anyway (`shard_one_rank`, what bf16 on one GPU gets): FSDP's per-layer copies."""
    roles = {
        "actor": RoleSpec(HybridActor, kwargs=actor_kwargs(tiny_model_dir, shard_one_rank=True)),
        # the same model gathered whole on one rank: a second full copy, which the audit must see
        "copying": RoleSpec(HybridActor, kwargs=actor_kwargs(tiny_model_dir, keep_unsharded=True,
                                                             shard_one_rank=True)),
    }
    with WorkerGroup(None, roles, backend="local") as group:
        yield group


@pytest.fixture(scope="module")
def one_rank_plain(tiny_model_dir):
    """One fp32 rank as the Session builds it by default: a plain module, no FSDP."""
    with WorkerGroup(None, {"actor": RoleSpec(HybridActor, kwargs=actor_kwargs(tiny_model_dir))},
                     backend="local") as group:
        yield group


@pytest.fixture(scope="module")
def two_ranks(ray_cluster, tiny_model_dir):
    pool = ResourcePool(nodes=1, devices_per_node=2)
    group = WorkerGroup(pool, {"actor": RoleSpec(HybridActor, kwargs=actor_kwargs(tiny_model_dir))},
                        backend="ray", threads_per_worker=1)
    yield group
    group.close()
    pool.close()


@pytest.fixture(scope="module")
def full_model_bytes(tiny_model_dir) -> int:
    """Parameter storage of the whole model, measured on a plain transformers copy."""
    return parameter_storage_bytes(AutoModelForCausalLM.from_pretrained(tiny_model_dir))


@pytest.fixture
def group(request):
    """The group named by an indirect parametrisation ("one_rank" / "two_ranks")."""
    return request.getfixturevalue(request.param)


def pg_loss(outputs, mb, global_tokens, global_seqs):
    mask = mb.response_mask.to(outputs["logprobs"].device)
    return aggregate(-outputs["logprobs"] * mb.advantages, mask, "token-mean", global_tokens=global_tokens), {}


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(((a - b).abs() * mask).max())


# ----------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("group", ["one_rank_plain", "one_rank", "two_ranks"], indirect=True)
def test_rollout_logprobs_equal_trainer_logprobs_after_a_learn_step(group, prompts):
    actor = group.actor
    first = actor.generate(prompts, {"seed": 1})
    assert len(first) == 2 * len(TEXTS)
    old = actor.compute_logprobs(first).old_logprobs
    assert masked_max_diff(old, first.rollout_logprobs, first.response_mask) < 1e-4

    advantages = torch.randn(first.response_ids.shape, generator=torch.Generator().manual_seed(0))
    actor.update(first.replace(advantages=advantages, old_logprobs=old), pg_loss)
    moved = actor.compute_logprobs(first).old_logprobs
    assert masked_max_diff(moved, first.rollout_logprobs, first.response_mask) > 1e-3  # the policy did change

    second = actor.generate(prompts, {"seed": 2})
    recomputed = actor.compute_logprobs(second).old_logprobs
    assert masked_max_diff(recomputed, second.rollout_logprobs, second.response_mask) < 1e-4
    assert (second.rollout_logprobs[second.response_mask == 0] == 0).all()


def test_greedy_equals_the_exported_model_generate(two_ranks, prompts, tmp_path):
    actor = two_ranks.actor
    actor.update(actor.generate(prompts, {"seed": 3}).replace(
        advantages=torch.ones(len(prompts) * 2, 8)), pg_loss)  # weights that are not the checkpoint's
    ours = actor.generate(prompts, {"temperature": 0, "n": 1, "max_new_tokens": 10})
    path = actor.save_pretrained(tmp_path / "export")
    model, tok = load_model_and_tokenizer(path)
    ref = model.generate(input_ids=prompts.prompt_ids, attention_mask=prompts.prompt_mask, do_sample=False,
                         max_new_tokens=10)[:, prompts.prompt_ids.shape[1]:]
    for i in range(len(prompts)):
        expected = ref[i].tolist()  # generate() pads rows that ended with EOS; ours masks them
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        assert ours.response_ids[i][ours.response_mask[i].bool()].tolist() == expected, i
    assert ours.response_text[0] == tok.decode(ours.response_ids[0][ours.response_mask[0].bool()],
                                               skip_special_tokens=True)


@pytest.mark.parametrize("group", ["one_rank", "two_ranks"], indirect=True)
def test_generation_holds_no_second_copy_of_the_weights(group, prompts, full_model_bytes):
    group.actor.generate(prompts)
    syncs = group.actor.last_sync()
    assert len(syncs) == group.world_size
    for sync in syncs:
        extra = sync["param_bytes_peak"] - sync["param_bytes_sharded"]
        assert sync["param_bytes_sharded"] >= full_model_bytes / group.world_size  # the shards stay (optimizer)
        if group.world_size == 1:
            # one rank: the shard is the full weight, so nothing is gathered whole; FSDP's per-layer
            # copy holds at most the root (embedding) plus one decoder layer at a time
            assert sync["mode"] == "per-layer" and sync["bytes"] == 0
            assert 0 < extra < 0.5 * full_model_bytes
        else:
            # W ranks: the gathered parameters are the only addition, exactly one model's worth
            assert sync["mode"] == "gathered"
            # (FSDP2 pads a gathered tensor to a multiple of W rows: the 103-row embedding gets one more)
            assert full_model_bytes <= sync["bytes"] <= full_model_bytes * 1.01
            assert extra <= full_model_bytes * 1.01
            assert sync["param_bytes_sharded"] < 0.6 * full_model_bytes
    if group.world_size == 1:
        # the audit does see a whole second copy when one is made (keep_unsharded on one rank)
        group.copying.generate(prompts)
        (copying,) = group.copying.last_sync()
        assert copying["param_bytes_peak"] - copying["param_bytes_sharded"] >= full_model_bytes
        assert copying["bytes"] == full_model_bytes


def test_a_plain_one_rank_actor_generates_from_its_own_parameters(one_rank_plain, prompts, full_model_bytes):
    """The default one-rank fp32 actor is not FSDP-wrapped: no gather, no copy, nothing added."""
    actor = one_rank_plain.actor
    actor.generate(prompts)
    (sync,) = actor.last_sync()
    assert sync["mode"] == "unsharded" and sync["bytes"] == 0 and sync["seconds"] == 0
    assert sync["param_bytes_sharded"] == full_model_bytes
    assert sync["param_bytes_peak"] == sync["param_bytes_sharded"]


# ----------------------------------------------------------------------------- layout and seeds


def test_group_ids_and_rows_follow_the_prompts_across_ranks(two_ranks, prompts):
    out = two_ranks.actor.generate(prompts, {"n": 3, "seed": 4})
    assert len(out) == 3 * len(TEXTS)  # the padding prompt of the odd split is dropped
    assert out.group_id.tolist() == [i for i in range(len(TEXTS)) for _ in range(3)]
    assert list(out.prompt_text) == [t for t in TEXTS for _ in range(3)]
    assert list(out.ground_truth) == [i for i in range(len(TEXTS)) for _ in range(3)]
    assert torch.equal(out.prompt_ids, prompts.prompt_ids.repeat_interleave(3, 0))
    assert (out.response_mask.sum(-1) >= 1).all() and out.response_ids.shape[1] <= 8
    # a group_id the driver assigned is kept
    given = two_ranks.actor.generate(prompts.replace(group_id=torch.arange(len(TEXTS)) + 100), {"n": 1})
    assert given.group_id.tolist() == list(range(100, 100 + len(TEXTS)))


def test_seeds_reproduce_per_call_and_differ_per_rank(two_ranks, tokenizer):
    ids, mask = encode_prompts(tokenizer, ["5+5="] * 4, 8)
    same = Batch.from_prompts(ids, mask)  # one prompt, two rows on each rank
    a = two_ranks.actor.generate(same, {"n": 1, "seed": 7, "temperature": 0.8})
    b = two_ranks.actor.generate(same, {"n": 1, "seed": 7, "temperature": 0.8})
    c = two_ranks.actor.generate(same, {"n": 1, "temperature": 0.8})
    d = two_ranks.actor.generate(same, {"n": 1, "temperature": 0.8})
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids[:2], a.response_ids[2:])  # rank 0's draws are not rank 1's
    assert not torch.equal(c.response_ids, d.response_ids)  # no seed: every call draws anew


def test_generate_is_measured_in_the_actor_stats(one_rank, prompts):
    one_rank.actor.pop_stats()
    out = one_rank.actor.generate(prompts, {"n": 1})
    (stats,) = one_rank.actor.pop_stats()
    (entry,) = [s for s in stats if "actor/generate/seconds" in s]
    assert entry["actor/generate/new_tokens"] == out.response_mask.sum()
    assert entry["actor/generate/tokens"] == out.num_tokens()
    assert entry["actor/generate/sync/world_size"] == 1.0


@pytest.mark.parametrize("temperature, logprob_temperature", [(0.7, 0.7), (0.0, 1.0)])
def test_kwargs_from_config_take_log_probs_at_the_sampling_temperature(temperature, logprob_temperature):
    from rlkit.config import Config

    cfg = Config.preset("arithmetic-tiny")
    cfg.rollout.temperature = temperature
    kwargs = HybridActor.kwargs_from_config(cfg)
    assert kwargs["temperature"] == logprob_temperature and kwargs["rollout"] is cfg.rollout
    assert kwargs["model"] == cfg.model.path


# ----------------------------------------------------------------------------- the explicit weight sync


def learn_step(actor, prompts, seed: int) -> None:
    """One policy-gradient update on fresh samples: the trainer's weights change, the engine goes stale."""
    batch = actor.generate(prompts, {"n": 1, "seed": seed})
    advantages = torch.randn(batch.response_ids.shape, generator=torch.Generator().manual_seed(seed))
    actor.update(batch.replace(advantages=advantages, old_logprobs=actor.compute_logprobs(batch).old_logprobs),
                 pg_loss)


def generate_entry(actor, prompts, sampling: dict) -> tuple[Batch, dict[str, float]]:
    """One generate call and its entry in the actor's stats (one rank)."""
    actor.pop_stats()
    out = actor.generate(prompts, sampling)
    (stats,) = actor.pop_stats()
    (entry,) = [s for s in stats if "actor/generate/seconds" in s]
    return out, entry


def test_sync_weights_moves_nothing_on_the_hf_engine_and_the_next_generate_makes_no_sync(one_rank_plain, prompts):
    actor = one_rank_plain.actor
    (report,) = actor.sync_weights()
    assert report["mode"] == "in-place" and report["bytes"] == 0 and report["seconds"] == 0
    learn_step(actor, prompts, seed=5)
    (report,) = actor.sync_weights()  # after the update: still nothing to move (same parameters)
    assert report["mode"] == "in-place" and report["bytes"] == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*sync_weights")  # synced: no fallback, no warning
        out, entry = generate_entry(actor, prompts, {"seed": 6})
    assert entry["actor/generate/stale"] == 0 and entry["actor/generate/sync_bytes"] == 0
    recomputed = actor.compute_logprobs(out).old_logprobs
    assert masked_max_diff(recomputed, out.rollout_logprobs, out.response_mask) < 1e-4


@pytest.fixture
def fresh_plain(tiny_model_dir):
    """A new one-rank plain actor: the warning is once per actor, and other tests update without syncing."""
    with WorkerGroup(None, {"actor": RoleSpec(HybridActor, kwargs=actor_kwargs(tiny_model_dir))},
                     backend="local") as group:
        yield group


def test_generate_after_update_without_sync_weights_syncs_first_and_warns_once(fresh_plain, prompts):
    actor = fresh_plain.actor
    learn_step(actor, prompts, seed=7)
    with pytest.warns(UserWarning, match=r"sync_weights\(\) was not called"):
        out, entry = generate_entry(actor, prompts, {"seed": 8})
    assert entry["actor/generate/stale"] == 1  # the fallback ran (trivial for hf: 0 bytes)
    assert entry["actor/generate/sync_bytes"] == 0
    recomputed = actor.compute_logprobs(out).old_logprobs
    assert masked_max_diff(recomputed, out.rollout_logprobs, out.response_mask) < 1e-4
    _, entry = generate_entry(actor, prompts, {"seed": 8})  # the fallback synced: nothing stale any more
    assert entry["actor/generate/stale"] == 0
    learn_step(actor, prompts, seed=9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, entry = generate_entry(actor, prompts, {"seed": 10})
    assert entry["actor/generate/stale"] == 1
    assert not [w for w in caught if "sync_weights" in str(w.message)]  # warned once only


def test_loading_a_checkpoint_marks_the_engine_stale(one_rank_plain, prompts, tmp_path):
    actor = one_rank_plain.actor
    path = actor.save_checkpoint(tmp_path / "ckpt")
    actor.sync_weights()
    actor.load_checkpoint(path)
    _, entry = generate_entry(actor, prompts, {"seed": 11})
    assert entry["actor/generate/stale"] == 1


def test_an_unknown_engine_name_is_an_error_naming_the_known_engines(tiny_model_dir):
    with pytest.raises(Exception, match=r"known engines are \['hf', 'vllm'\]"):
        WorkerGroup(None, {"actor": RoleSpec(HybridActor, kwargs=actor_kwargs(tiny_model_dir, engine="sglang"))},
                    backend="local")


def test_the_engine_builders_are_exactly_the_engine_names_the_config_allows():
    from rlkit.rollout.engine import ENGINE_NAMES
    from rlkit.rollout.hybrid import ENGINE_BUILDERS

    assert sorted(ENGINE_BUILDERS) == sorted(ENGINE_NAMES)
