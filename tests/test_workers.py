"""FSDP2 workers: rank/micro-batch equivalence, checkpoints, HF export, bad input.

The 2-rank runs go through a ray `WorkerGroup` (gloo), the 1-rank references
through the local backend, so they exercise the real dispatch path.

Why `eps=1.0` in the AdamW of the equivalence tests: Adam's first update is
about `lr * sign(g)` for gradients far above eps, and very sensitive to g where
|g| ~ eps (1e-8 by default), where float summation order (2 ranks vs 1, 8
micro-batches vs 1) decides the result. With eps=1 the update is smooth in g,
so comparing weights after a step compares gradients at a tight tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.algos.core import aggregate, masked_mean
from rlkit.batch import Batch
from rlkit.cluster import ResourcePool, RoleSpec, WorkerGroup
from rlkit.workers.batching import interleave_minibatches
from rlkit.workers.critic import CriticWorker
from rlkit.workers.policy import PolicyWorker
from rlkit.workers.reference import ReferenceWorker

OPTIM = {"lr": 1e-2, "eps": 1.0}


def make_batch(n: int = 8, prompt_len: int = 6, response_len: int = 5, seed: int = 0) -> Batch:
    """Random prompts (left-padded) and responses (right-padded) of varied lengths, with
    advantages, old values and returns for the policy and critic losses."""
    g = torch.Generator().manual_seed(seed)
    p_lens = torch.randint(2, prompt_len + 1, (n,), generator=g)
    r_lens = torch.randint(1, response_len + 1, (n,), generator=g)
    prompt_ids = torch.zeros(n, prompt_len, dtype=torch.long)
    prompt_mask = torch.zeros(n, prompt_len, dtype=torch.long)
    response_ids = torch.zeros(n, response_len, dtype=torch.long)
    response_mask = torch.zeros(n, response_len, dtype=torch.long)
    for i in range(n):
        p, r = int(p_lens[i]), int(r_lens[i])
        prompt_ids[i, prompt_len - p :] = torch.randint(7, 100, (p,), generator=g)
        prompt_mask[i, prompt_len - p :] = 1
        response_ids[i, :r] = torch.randint(7, 100, (r,), generator=g)
        response_mask[i, :r] = 1
    return Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        advantages=torch.randn(n, response_len, generator=g),
        values=torch.randn(n, response_len, generator=g),
        returns=torch.randn(n, response_len, generator=g),
        batch_size=[n],
    )


def pg_loss(outputs, mb, global_tokens, global_seqs):
    """A REINFORCE-style loss with an entropy metric: enough to exercise the contract."""
    mask = mb.response_mask.to(outputs["logprobs"].device)
    loss = aggregate(-outputs["logprobs"] * mb.advantages, mask, "token-mean", global_tokens=global_tokens)
    return loss, {"entropy": masked_mean(outputs["entropy"].detach(), mask)}


def seq_loss(outputs, mb, global_tokens, global_seqs):
    """The same with per-sequence normalisation (the `global_seqs` path)."""
    mask = mb.response_mask
    loss = aggregate(-outputs["logprobs"] * mb.advantages, mask, "seq-mean-token-sum", global_seqs=global_seqs)
    return loss, {}


def roles(model_dir, micro: int, mini: int | None = 4) -> dict[str, RoleSpec]:
    common = {"model": str(model_dir), "optim": OPTIM, "micro_batch_size": micro, "mini_batch_size": mini}
    return {
        "actor": RoleSpec(PolicyWorker, kwargs=common),
        "critic": RoleSpec(CriticWorker, kwargs={**common, "value_clip": 0.2}),
    }


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_rank_group(ray_cluster, tiny_model_dir):
    pool = ResourcePool(nodes=1, devices_per_node=2)
    group = WorkerGroup(pool, roles(tiny_model_dir, micro=2), backend="ray", threads_per_worker=1)
    yield group
    group.close()
    pool.close()


def local_group(model_dir, micro: int, mini: int | None = 4) -> WorkerGroup:
    return WorkerGroup(None, roles(model_dir, micro, mini), backend="local")


# ----------------------------------------------------------------------------- equivalence


def test_two_ranks_equal_one_rank_policy_and_critic(two_rank_group, tiny_model_dir):
    batch = make_batch(8)
    # 8 rows, global mini-batches of 4: two optimizer steps, each seeing the same rows on 1 or 2 ranks.
    with local_group(tiny_model_dir, micro=4) as one:
        ref_lp = one.actor.compute_logprobs(batch).old_logprobs
        ref_values = one.critic.compute_values(batch).values
        ref_actor = one.actor.update(interleave_minibatches(batch, 1, 4), pg_loss)
        ref_critic = one.critic.update(interleave_minibatches(batch, 1, 4))
        ref_weights = one.actor.full_state_dict()
        ref_critic_weights = one.critic.full_state_dict()

    two = two_rank_group
    lp = two.actor.compute_logprobs(batch).old_logprobs
    values = two.critic.compute_values(batch).values
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-5)
    torch.testing.assert_close(values, ref_values, rtol=0, atol=1e-5)
    assert lp.shape == (8, 5) and (lp[batch.response_mask == 0] == 0).all()

    actor = two.actor.update(interleave_minibatches(batch, 2, 4), pg_loss)
    critic = two.critic.update(interleave_minibatches(batch, 2, 4))
    assert isinstance(actor, list) and len(actor) == 2  # split protocol: one metrics dict per rank
    assert actor[0]["actor/loss"] == actor[1]["actor/loss"]  # the loss is all-reduced
    for key in ("actor/loss", "actor/entropy", "actor/grad_norm"):
        assert actor[0][key] == pytest.approx(ref_actor[0][key], rel=1e-5), key
    for key in ("critic/loss", "critic/clipfrac", "critic/grad_norm"):
        assert critic[0][key] == pytest.approx(ref_critic[0][key], rel=1e-5), key
    assert actor[0]["actor/optimizer_steps"] == 2
    assert max_diff(two.actor.full_state_dict(), ref_weights) < 1e-6
    assert max_diff(two.critic.full_state_dict(), ref_critic_weights) < 1e-6
    # the update changed the policy: the comparison above is not vacuous
    assert max_diff(two.actor.full_state_dict(), one_start_weights(tiny_model_dir)) > 1e-4


def one_start_weights(model_dir) -> dict:
    from transformers import AutoModelForCausalLM

    return {k: v for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


@pytest.mark.parametrize("loss_fn", [pg_loss, seq_loss], ids=["token-mean", "seq-mean"])
def test_one_microbatch_of_8_equals_8_of_1(tiny_model_dir, loss_fn):
    batch = make_batch(8, seed=1)
    results = {}
    for micro in (8, 1):
        with local_group(tiny_model_dir, micro=micro, mini=None) as group:
            actor = group.actor.update(batch, loss_fn)[0]
            critic = group.critic.update(batch)[0]
            results[micro] = (actor, critic, group.actor.full_state_dict(), group.critic.full_state_dict())
    (a8, c8, w8, cw8), (a1, c1, w1, cw1) = results[8], results[1]
    assert a1["actor/loss"] == pytest.approx(a8["actor/loss"], rel=1e-5)
    assert c1["critic/loss"] == pytest.approx(c8["critic/loss"], rel=1e-5)
    assert a1["actor/grad_norm"] == pytest.approx(a8["actor/grad_norm"], rel=1e-5)
    assert max_diff(w1, w8) < 1e-6
    assert max_diff(cw1, cw8) < 1e-6


def test_reference_matches_untrained_policy(tiny_model_dir):
    batch = make_batch(6, seed=2)
    specs = {
        "actor": RoleSpec(PolicyWorker, kwargs={"model": str(tiny_model_dir), "micro_batch_size": 4}),
        "ref": RoleSpec(ReferenceWorker, kwargs={"model": str(tiny_model_dir), "micro_batch_size": 3}),
    }
    with WorkerGroup(None, specs, backend="local") as group:
        ref = group.ref.compute_logprobs(batch)
        old = group.actor.compute_logprobs(batch)
        stats = group.ref.pop_stats()[0]
    assert ref.present_fields() == ["ref_logprobs"] and old.present_fields() == ["old_logprobs"]
    torch.testing.assert_close(ref.ref_logprobs, old.old_logprobs, rtol=0, atol=1e-6)
    assert (ref.ref_logprobs[batch.response_mask == 1] < 0).all()
    (call,) = stats
    assert call["ref/compute_logprobs/tokens"] == batch.num_tokens()
    assert call["ref/compute_logprobs/seconds"] > 0 and call["ref/compute_logprobs/flops"] > 0
    assert call["ref/compute_logprobs/host_rss_gb"] > 0


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_is_bit_identical(two_rank_group, tiny_model_dir, tmp_path):
    batch = make_batch(8, seed=3)
    cosine = {"lr": 1e-2, "warmup_steps": 2, "lr_schedule": "cosine", "total_steps": 6}
    spec = {"actor": RoleSpec(PolicyWorker, kwargs={"model": str(tiny_model_dir), "optim": cosine, "micro_batch_size": 2})}
    pool = ResourcePool(nodes=1, devices_per_node=2)
    with WorkerGroup(pool, spec, backend="ray", threads_per_worker=1) as run:
        run.actor.update(batch, pg_loss)  # step k=1
        run.actor.save_checkpoint(tmp_path / "ckpt", extra={"step": 1})
        after_save = run.actor.full_state_dict()
        uninterrupted = run.actor.update(batch, pg_loss)[0]  # step k+1
        expected = run.actor.full_state_dict()
    with WorkerGroup(pool, spec, backend="ray", threads_per_worker=1) as fresh:
        assert fresh.actor.load_checkpoint(tmp_path / "ckpt") == {"step": 1}
        assert all(torch.equal(v, after_save[k]) for k, v in fresh.actor.full_state_dict().items())
        resumed = fresh.actor.update(batch, pg_loss)[0]
        got = fresh.actor.full_state_dict()
        assert fresh.actor.optimizer_steps() == 2
    pool.close()
    assert resumed["actor/lr"] == uninterrupted["actor/lr"] == pytest.approx(1e-2)  # warm-up done, cosine at 0
    assert resumed["actor/loss"] == uninterrupted["actor/loss"]
    assert all(torch.equal(got[k], expected[k]) for k in expected), "resumed weights differ"
    assert max_diff(expected, after_save) > 0  # step k+1 moved the weights


def test_checkpoint_of_a_plain_one_rank_model_loads_into_two_fsdp_ranks_and_back(two_rank_group, tiny_model_dir,
                                                                                  tmp_path):
    """A one-rank fp32 model is a plain module; its checkpoint must resume on FSDP2 ranks, and theirs on it."""
    batch = make_batch(8, seed=5)
    spec = {"actor": RoleSpec(PolicyWorker, kwargs={"model": str(tiny_model_dir), "optim": {"lr": 1e-2},
                                                     "micro_batch_size": 2})}
    with WorkerGroup(None, spec, backend="local") as one:
        one.actor.update(batch, pg_loss)
        one.actor.save_checkpoint(tmp_path / "plain", extra={"step": 1})
        saved = one.actor.full_state_dict()
        next_loss = one.actor.update(batch, pg_loss)[0]["actor/loss"]
        assert max_diff(one.actor.full_state_dict(), saved) > 0  # a snapshot: the step did not change it
    pool = ResourcePool(nodes=1, devices_per_node=2)
    with WorkerGroup(pool, spec, backend="ray", threads_per_worker=1) as two:
        assert two.actor.load_checkpoint(tmp_path / "plain") == {"step": 1}
        assert all(torch.equal(v, saved[k]) for k, v in two.actor.full_state_dict().items())
        resumed = two.actor.update(batch, pg_loss)[0]
        assert two.actor.optimizer_steps() == 2  # the AdamW state and schedule came along
        two.actor.save_checkpoint(tmp_path / "sharded", extra={"step": 2})
        sharded = two.actor.full_state_dict()
    pool.close()
    assert resumed["actor/loss"] == pytest.approx(next_loss, rel=1e-6)
    with WorkerGroup(None, spec, backend="local") as back:
        assert back.actor.load_checkpoint(tmp_path / "sharded") == {"step": 2}
        assert all(torch.equal(v, sharded[k]) for k, v in back.actor.full_state_dict().items())


# ----------------------------------------------------------------------------- HF export


def test_hf_export_loads_with_from_pretrained_and_gives_identical_logits(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rlkit.workers.batching import sequence_inputs

    batch = make_batch(4, seed=4)
    with local_group(tiny_model_dir, micro=4, mini=None) as group:
        group.actor.update(batch, pg_loss)
        group.critic.update(batch)
        weights = group.actor.full_state_dict()
        logprobs = group.actor.compute_logprobs(batch).old_logprobs
        values = group.critic.compute_values(batch).values
        group.actor.save_pretrained(tmp_path / "actor")
        group.critic.save_pretrained(tmp_path / "critic")

    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "actor").eval()
    assert all(torch.equal(exported.state_dict()[k], v) for k, v in weights.items())
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    reference.load_state_dict(weights)
    ids, mask, positions, prompt_len = sequence_inputs(batch)
    with torch.no_grad():
        logits = exported(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    assert torch.equal(logits, expected)
    # the worker's log-probs are those of the exported model's logits
    picked = torch.log_softmax(logits[:, prompt_len - 1 : -1], -1).gather(-1, ids[:, prompt_len:, None])[..., 0]
    valid = batch.response_mask.bool()
    torch.testing.assert_close(logprobs[valid], picked[valid], rtol=0, atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "actor")) == exported.config.vocab_size

    critic = AutoModelForSequenceClassification.from_pretrained(tmp_path / "critic").eval()
    with torch.no_grad():
        hidden = critic.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        per_token = critic.score(hidden)[..., 0]
    torch.testing.assert_close(values[valid], per_token[:, prompt_len - 1 : -1][valid], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_missing_model_path_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model.*does not exist"):
        WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs={"model": str(missing)})}, backend="local")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs={"model": str(empty)})}, backend="local")


def test_tokenizer_that_does_not_match_the_model(tiny_model_dir, tmp_path):
    from rlkit.data.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    tokenizer.add_tokens([f"<extra{i}>" for i in range(40)])  # 143 tokens for a 103-row embedding
    tokenizer.save_pretrained(tmp_path / "big-tokenizer")
    kwargs = {"model": str(tiny_model_dir), "tokenizer_path": str(tmp_path / "big-tokenizer")}
    with pytest.raises(ValueError, match="tokenizer has 143 tokens but model .* embeds only 103"):
        WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs=kwargs)}, backend="local")


def test_empty_response_mask_is_a_clear_error(tiny_model_dir):
    batch = make_batch(4, seed=5)
    batch = batch.replace(response_mask=torch.zeros_like(batch.response_mask))
    with local_group(tiny_model_dir, micro=2, mini=None) as group:
        with pytest.raises(ValueError, match="response_mask is all zero"):
            group.actor.update(batch, pg_loss)
        with pytest.raises(ValueError, match="response_mask is all zero"):
            group.critic.update(batch)
        with pytest.raises(ValueError, match="no returns"):
            group.critic.update(make_batch(4).replace(returns=None))


def test_gradient_checkpointing_gives_the_same_update(tiny_model_dir):
    batch = make_batch(6, seed=6)
    weights = []
    for checkpointing in (False, True):
        kwargs = {"model": str(tiny_model_dir), "optim": OPTIM, "micro_batch_size": 3, "gradient_checkpointing": checkpointing}
        with WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs=kwargs)}, backend="local") as group:
            group.actor.update(batch, pg_loss)
            weights.append(group.actor.full_state_dict())
    assert max_diff(*weights) < 1e-6


@pytest.mark.gpu
def test_cuda_mixed_precision_and_offload_between_calls(tiny_model_dir):
    """On CUDA: bf16 compute with fp32 master weights, and offload moves the shards to CPU between calls."""
    batch = make_batch(8, seed=7)
    kwargs = {"model": str(tiny_model_dir), "optim": OPTIM, "micro_batch_size": 4, "offload": True}
    with WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs=kwargs)}, backend="local") as group:
        assert torch.cuda.memory_allocated() < 1 << 20  # parameters wait on the host
        lp = group.actor.compute_logprobs(batch).old_logprobs
        metrics = group.actor.update(batch, pg_loss)[0]
        assert torch.cuda.memory_allocated() < 1 << 20  # and go back after the update
        weights = group.actor.full_state_dict()
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert all(v.dtype == torch.float32 for v in weights.values())  # master weights stay fp32
    assert metrics["actor/update/cuda_peak_gb"] > 0
    assert math.isfinite(metrics["actor/loss"])
