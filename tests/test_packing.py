"""Padding removal and token-budget micro-batches: hand-computed plans, and equivalence with the padded
row split for log-probs, values and whole updates (1 rank local, 2 ranks on Ray)."""

from __future__ import annotations

import pytest
import torch

from rlkit.batch import Batch
from rlkit.cluster import ResourcePool, RoleSpec, WorkerGroup
from rlkit.workers.batching import balance_minibatch_tokens, interleave_minibatches
from rlkit.workers.critic import CriticWorker
from rlkit.workers.packing import balanced_rank_order, pack_sequences, plan_token_micro_batches, row_token_counts
from rlkit.workers.policy import PolicyWorker
from tests.test_workers import OPTIM, make_batch, max_diff, pg_loss


# ----------------------------------------------------------------------------- pure functions, by hand


def two_rows() -> Batch:
    # row 0: prompt [5, 6] (one pad on the left), response [7] (two pads on the right)
    # row 1: prompt [8, 9, 10], response [11, 12, 13]
    return Batch(prompt_ids=torch.tensor([[0, 5, 6], [8, 9, 10]]), prompt_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]),
                 response_ids=torch.tensor([[7, 0, 0], [11, 12, 13]]),
                 response_mask=torch.tensor([[1, 0, 0], [1, 1, 1]]), batch_size=[2])


def test_pack_sequences_by_hand():
    packed = pack_sequences(two_rows())
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 13]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3, 4, 5]]
    # row 0's response token 0 (7, column 2) is predicted from column 1; row 1's tokens from columns 5, 6, 7
    assert packed.predict_index.tolist() == [[1, 0, 0], [5, 6, 7]]
    assert packed.targets.tolist() == [[7, 0, 0], [11, 12, 13]]
    assert packed.valid.tolist() == [[True, False, False], [True, True, True]]
    assert row_token_counts(two_rows()).tolist() == [3, 6]


def test_token_budget_plans_by_hand():
    lengths = [5, 3, 8, 2]  # longest first: rows 2 (8), 0 (5), 1 (3), 3 (2)
    # padded: [2] costs 8; [2, 0] would cost 2 x 8; [0, 1] 2 x 5 = 10; [0, 1, 3] 3 x 5 = 15 > 10
    assert plan_token_micro_batches(lengths, 10, packed=False) == [[2], [0, 1], [3]]
    # packed: real tokens only: [0, 1, 3] = 5 + 3 + 2 = 10 fits
    assert plan_token_micro_batches(lengths, 10, packed=True) == [[2], [0, 1, 3]]
    # another rank needed 3 micro-batches: the costliest one with two rows or more is halved
    assert plan_token_micro_batches(lengths, 10, packed=True, min_count=3) == [[2], [0, 1], [3]]
    assert plan_token_micro_batches(lengths, 4, packed=True) == [[2], [0], [1], [3]]  # each row alone
    with pytest.raises(ValueError, match="max_tokens"):
        plan_token_micro_batches(lengths, 0, packed=True)


def test_balanced_rank_order_by_hand():
    lengths = [1, 8, 3, 6, 5, 2]  # longest first: 1 (8), 3 (6), 4 (5), 2 (3), 5 (2), 0 (1)
    # snake over 2 ranks: rank 0 gets rows 1, 2, 5 (8 + 3 + 2 = 13 tokens); rank 1 rows 3, 4, 0 (6 + 5 + 1 = 12)
    assert balanced_rank_order(lengths, 2) == [1, 2, 5, 0, 3, 4]
    batch = make_batch(8, seed=3)
    balanced = balance_minibatch_tokens(batch, 2, 4)
    for k in (0, 4):  # each mini-batch keeps its rows, only their order inside it changes
        assert sorted(balanced.prompt_ids[k:k + 4].tolist()) == sorted(batch.prompt_ids[k:k + 4].tolist())


# ----------------------------------------------------------------------------- equivalence on a model


def group(model_dir, logits_chunk_size: int = 0, **kwargs):
    common = {"model": str(model_dir), "optim": OPTIM, "mini_batch_size": None, **kwargs}
    return WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs={**common, "logits_chunk_size": logits_chunk_size}),
                              "critic": RoleSpec(CriticWorker, kwargs={**common, "value_clip": 0.2})},
                       backend="local")


@pytest.mark.parametrize("chunk", [0, 4], ids=["whole-logits", "chunked-head"])
def test_packed_logprobs_and_values_equal_padded(tiny_model_dir, chunk):
    batch = make_batch(8, prompt_len=9, response_len=7, seed=5)
    with group(tiny_model_dir, micro_batch_size=8, logits_chunk_size=chunk) as padded:
        lp = padded.actor.compute_logprobs(batch).old_logprobs
        values = padded.critic.compute_values(batch).values
    import rlkit.workers.critic as critic_module
    import rlkit.workers.policy as policy_module

    packed_calls = []

    def counting(original):
        def pack(mb):
            packed_calls.append(len(mb))
            return original(mb)
        return pack

    with group(tiny_model_dir, micro_batch_size=8, logits_chunk_size=chunk, pack_sequences=True) as packed, \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy_module, "pack_sequences", counting(policy_module.pack_sequences))
        mp.setattr(critic_module, "pack_sequences", counting(critic_module.pack_sequences))
        lp_packed = packed.actor.compute_logprobs(batch).old_logprobs
        values_packed = packed.critic.compute_values(batch).values
    assert packed_calls == [8, 8]  # the switch is on: both roles ran the micro-batch packed
    mask = batch.response_mask.bool()
    assert (lp_packed - lp)[mask].abs().max() < 1e-5 and (lp_packed[~mask] == 0).all()
    assert (values_packed - values)[mask].abs().max() < 1e-5
    assert (lp[mask] < 0).all()  # real log-probs were compared


@pytest.mark.parametrize("pack", [False, True], ids=["padded", "packed"])
def test_token_budget_update_equals_the_row_split(tiny_model_dir, pack):
    batch = make_batch(8, prompt_len=9, response_len=7, seed=6)
    with group(tiny_model_dir, micro_batch_size=4) as rows:
        lp = rows.actor.compute_logprobs(batch).old_logprobs
        rows_stats = rows.actor.update(batch, pg_loss)[0]
        critic_stats = rows.critic.update(batch)[0]
        weights = {**rows.actor.full_state_dict(), **{f"c.{k}": v for k, v in rows.critic.full_state_dict().items()}}
        rows_calls = rows.actor.pop_stats()[0]
    with group(tiny_model_dir, micro_batch_size=4, max_tokens_per_micro_batch=24, pack_sequences=pack) as budget:
        lp_budget = budget.actor.compute_logprobs(batch).old_logprobs  # rows out of order inside, back in order
        budget_stats = budget.actor.update(batch, pg_loss)[0]
        budget_critic = budget.critic.update(batch)[0]
        budget_weights = {**budget.actor.full_state_dict(),
                          **{f"c.{k}": v for k, v in budget.critic.full_state_dict().items()}}
        calls = budget.actor.pop_stats()[0]
    mask = batch.response_mask.bool()
    # the switch is on: rows of similar length share a micro-batch, so the log-prob pass computes less padding
    def logprob_width(calls):
        (width,) = [c["actor/compute_logprobs/flops"] for c in calls if "actor/compute_logprobs/flops" in c]
        return width

    assert logprob_width(calls) < logprob_width(rows_calls)
    assert (lp_budget - lp)[mask].abs().max() < 1e-5
    assert budget_stats["actor/loss"] == pytest.approx(rows_stats["actor/loss"], rel=1e-5)
    assert budget_critic["critic/loss"] == pytest.approx(critic_stats["critic/loss"], rel=1e-5)
    assert max_diff(budget_weights, weights) < 1e-6
    assert any("actor/update/seconds" in c for c in calls)


def test_two_ranks_with_budgets_and_balance_equal_one_rank(ray_cluster, tiny_model_dir):
    """Token budgets on 2 ranks: the ranks plan different micro-batch counts (their rows differ), run the
    largest, and the update equals one rank's row split."""
    batch = make_batch(8, prompt_len=9, response_len=7, seed=7)
    kwargs = {"model": str(tiny_model_dir), "optim": OPTIM, "mini_batch_size": 4}
    with WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs={**kwargs, "micro_batch_size": 4})},
                     backend="local") as one:
        one.actor.update(interleave_minibatches(batch, 1, 4), pg_loss)
        expected = one.actor.full_state_dict()
    pool = ResourcePool(nodes=1, devices_per_node=2)
    two = WorkerGroup(pool, {"actor": RoleSpec(PolicyWorker, kwargs={**kwargs, "micro_batch_size": 2,
                                                                     "max_tokens_per_micro_batch": 12,
                                                                     "pack_sequences": True})},
                      backend="ray", threads_per_worker=1)
    try:
        ordered = interleave_minibatches(balance_minibatch_tokens(batch, 2, 4), 2, 4)
        two.actor.update(ordered, pg_loss)
        got = two.actor.full_state_dict()
    finally:
        two.close()
        pool.close()
    assert max_diff(got, expected) < 1e-6


class _MixingModel:
    """Stands in for a ShardedModel whose attention ignores packing: each output sums the whole row so far."""

    compute_dtype = torch.float32
    hf_model = torch.nn.Identity()

    class config:  # noqa: N801 - the attribute shape of a transformers config
        _attn_implementation = "eager"

        @staticmethod
        def get_text_config():
            return type("Text", (), {"vocab_size": 100})

    def forward(self, ids, mask, positions):
        return ids.float().cumsum(-1)  # (b, L): depends on every earlier token of the row


def test_a_model_whose_attention_mixes_packed_sequences_is_detected(tiny_model_dir, monkeypatch):
    import rlkit.workers.role as role_module

    problem = role_module.packing_problem(_MixingModel())
    assert problem is not None and "mixes packed sequences" in problem
    from rlkit.cluster.local import _acquire_dist, _release_dist
    from rlkit.workers.sharded import ShardedModel

    _acquire_dist(torch.device("cpu"))  # a one-rank process group, as the local backend makes
    try:  # the real attention keeps packed sequences apart
        assert role_module.packing_problem(ShardedModel(str(tiny_model_dir), trainable=False)) is None
    finally:
        _release_dist()
    monkeypatch.setattr(role_module, "packing_problem", lambda model: "its attention mixes packed sequences")
    with pytest.warns(RuntimeWarning, match="pack_sequences is off"):
        WorkerGroup(None, {"actor": RoleSpec(PolicyWorker, kwargs={"model": str(tiny_model_dir),
                                                                   "pack_sequences": True})},
                    backend="local").close()



def test_a_session_with_budgets_and_packing_takes_the_same_step(tmp_path):
    import rlkit

    def session_weights(name, **actor):
        cfg = rlkit.Config.preset(
            "arithmetic-tiny", algo="ppo",
            rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 6},
            actor={"mini_batch_size": 16, "micro_batch_size": 4, "lr": 3e-3, **actor},
            critic={"micro_batch_size": 4, **{k: v for k, v in actor.items()}},
            cluster={"backend": "local", "threads_per_worker": 1},
            logging={"run_dir": str(tmp_path), "run_name": name, "dashboard": False})
        with rlkit.Session(cfg, reward_fn=lambda text, truth, eos: float(text[:1].isdigit())) as s:
            stats = s.step()
            return stats, {**s.roles["actor"].full_state_dict(),
                           **{f"critic.{k}": v for k, v in s.roles["critic"].full_state_dict().items()}}

    rows_stats, rows = session_weights("rows")
    budget_stats, budget = session_weights("budget", max_tokens_per_micro_batch=40, pack_sequences=True)
    # Adam divides each gradient by its own running scale, so a parameter whose gradient is ~1e-9 moves by
    # about lr whatever its rounding: weights agree to a few % of one step (lr 3e-3), the gradients tightly.
    assert max_diff(budget, rows) < 1e-4
    for key in ("actor/loss", "actor/grad_norm", "critic/loss", "critic/grad_norm", "reward/mean"):
        assert budget_stats[key] == pytest.approx(rows_stats[key], rel=1e-4, abs=1e-7), key
