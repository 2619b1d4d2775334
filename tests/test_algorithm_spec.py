"""Algorithm specs and what reads them: config checks, roles, KL placement, epochs, per-rank stats, logging.

Most tests here run without workers: a fake `Stages` gives `prepare` the fields it asks for, so the
algorithm's own arithmetic is checked against hand-computed values. The Session tests use the local
backend (one process) on the tiny arithmetic model.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import rlkit
from rlkit.algos import core
from rlkit.algos.base import (
    AlgorithmSpec,
    available_algorithms,
    builtin_algorithms,
    get_algorithm,
    register_algorithm,
    spec_of,
)
from rlkit.algos.losses import PolicyLoss
from rlkit.batch import Batch
from rlkit.config import ConfigError
from rlkit.session import reduce_rank_stats


def tiny_config(tmp_path, **overrides):
    base = dict(
        logging={"run_dir": str(tmp_path), "run_name": "run", "dashboard": False},
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4},
        actor={"mini_batch_size": 16, "micro_batch_size": 8},
        critic={"micro_batch_size": 8},
        cluster={"backend": "local", "threads_per_worker": 1},
    )
    base.update(overrides)
    return rlkit.Config.preset("arithmetic-tiny", **base)


def parity_reward(text: str, ground_truth, eos_seen: bool) -> float:
    return float(bool(text) and ord(text[0]) % 2 == 1)


# --- the spec itself -------------------------------------------------------------------------------------


def test_builtin_algorithms_are_found_from_the_package_and_declare_their_facts(tmp_path):
    assert builtin_algorithms() == ("dapo", "dr_grpo", "grpo", "gspo", "ppo", "reinforce_pp", "remax", "rloo",
                                    "safe_rlhf")
    cfg = tiny_config(tmp_path)
    specs = {name: get_algorithm(name, cfg).spec for name in builtin_algorithms()}
    assert [n for n, s in specs.items() if s.needs_critic] == ["ppo"]  # Safe-RLHF here is critic-free
    assert [n for n, s in specs.items() if s.greedy_baseline] == ["remax"]
    assert sorted(n for n, s in specs.items() if s.group_relative) == ["dapo", "dr_grpo", "grpo", "gspo", "rloo",
                                                                          "safe_rlhf"]
    assert specs["safe_rlhf"].needs_costs and not specs["grpo"].needs_costs
    assert specs["ppo"].learn_fields == ("advantages", "old_logprobs", "values", "returns")
    # kl_coef > 0 (the preset's): a reference model; PPO and REINFORCE++ put the KL in the reward, the rest in the loss
    assert {n: s.kl_in for n, s in specs.items()} == {n: ("reward" if n in ("ppo", "reinforce_pp") else "loss")
                                                      for n in specs}
    no_kl = tiny_config(tmp_path, algo={"kl_coef": 0.0})
    assert not any(get_algorithm(n, no_kl).spec.needs_reference for n in builtin_algorithms())


def test_a_spec_must_be_consistent():
    with pytest.raises(ValueError, match="kl_in = 'reward' needs needs_reference=True"):
        AlgorithmSpec(kl_in="reward")
    with pytest.raises(ValueError, match="kl_in = 'both'"):
        AlgorithmSpec(needs_reference=True, kl_in="both")


def test_old_style_flags_still_give_a_spec():
    class Legacy:
        uses_critic, uses_reference = True, True

    assert spec_of(Legacy()) == AlgorithmSpec(needs_critic=True, needs_reference=True, kl_in="loss")


# --- defect: rollout.n >= 2 only for grpo and rloo --------------------------------------------------------


@pytest.mark.parametrize("name", ["dr_grpo", "dapo", "gspo", "safe_rlhf", "grpo", "rloo"])
def test_every_group_relative_algorithm_needs_two_samples_per_prompt(tmp_path, name):
    with pytest.raises(ConfigError, match=rf"rollout.n = 1: must be >= 2 for algo.name = '{name}'"):
        tiny_config(tmp_path, algo=name, rollout={"prompts_per_step": 16, "n": 1, "max_new_tokens": 4})
    for fine in ("ppo", "reinforce_pp", "remax"):  # not group-relative: one sample per prompt is allowed
        tiny_config(tmp_path, algo=fine, rollout={"prompts_per_step": 16, "n": 1, "max_new_tokens": 4})


# --- defect: algo.kl_in_reward removed the KL from the loss and put it nowhere ----------------------------


class FakeStages:
    """`compute` fills the asked fields from fixed tensors (what the workers would have computed)."""

    def __init__(self, cfg, fields: dict[str, torch.Tensor]):
        self.cfg, self.fields, self.asked = cfg, fields, []

    def compute(self, batch, *names):
        self.asked.append(names)
        names = names + (("costs",) if "scores" in names else ())  # a cost rule rides with the scores
        return batch.replace(**{n: self.fields[n] for n in names if n in self.fields})


def kl_batch():
    # 2 prompts x 2 samples, responses of 3, 2, 3, 1 tokens
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    batch = Batch(response_mask=mask, response_ids=torch.ones(4, 3, dtype=torch.long),
                  group_id=torch.tensor([0, 0, 1, 1]), batch_size=[4])
    fields = {
        "scores": torch.tensor([1.0, 0.0, 1.0, 1.0]),
        "old_logprobs": torch.log(torch.full((4, 3), 0.5)),
        # the reference puts 0.25 on every sampled token: k1 = log(0.5 / 0.25) = log 2 per token
        "ref_logprobs": torch.log(torch.full((4, 3), 0.25)),
    }
    return batch, fields


def test_kl_penalized_scores_by_hand():
    batch, fields = kl_batch()
    kl = core.kl_penalty(fields["old_logprobs"], fields["ref_logprobs"], "k1")
    out = core.kl_penalized_scores(fields["scores"], kl, batch.response_mask, coef=0.1)
    log2 = torch.log(torch.tensor(2.0))
    expected = torch.tensor([1 - 0.3 * log2, 0 - 0.2 * log2, 1 - 0.3 * log2, 1 - 0.1 * log2])
    assert torch.allclose(out, expected)


@pytest.mark.parametrize("name", ["grpo", "rloo", "dapo", "remax", "safe_rlhf"])
def test_kl_in_reward_subtracts_the_summed_penalty_from_the_scores(tmp_path, name):
    cfg = tiny_config(tmp_path, algo={"name": name, "kl_coef": 0.1, "kl_in_reward": True, "kl_kind": "k1"})
    algo = get_algorithm(name, cfg)
    assert algo.spec.kl_in == "reward" and algo.spec.needs_reference
    assert algo.actor_loss.kl_coef == 0.0  # no KL loss term: it is in the reward
    batch, fields = kl_batch()
    fields["costs"] = torch.zeros(4)
    batch = batch.replace(baseline_scores=torch.tensor([0.5, 0.5, 0.5, 0.5]))
    prepared = algo.prepare(FakeStages(cfg, fields), batch)
    log2 = float(torch.log(torch.tensor(2.0)))
    shaped = torch.tensor([1 - 0.3 * log2, -0.2 * log2, 1 - 0.3 * log2, 1 - 0.1 * log2])
    if name in ("grpo", "dapo", "safe_rlhf"):
        expected = core.grpo_advantages(shaped, batch.group_id, batch.response_mask)
        if name == "safe_rlhf":
            zero_cost = core.grpo_advantages(torch.zeros(4), batch.group_id, batch.response_mask)
            expected = core.safe_rlhf_advantages(expected, zero_cost, algo.lagrange)
    elif name == "rloo":
        expected = core.rloo_advantages(shaped, batch.group_id, batch.response_mask)
    else:
        expected = core.remax_advantages(shaped, batch.baseline_scores, batch.response_mask)
    assert torch.allclose(prepared.advantages, expected, atol=1e-6)
    # ... and different from the unshaped scores' advantages: group 1 scored 1 and 1 (no signal without KL)
    assert prepared.advantages[2:].abs().sum() > 0


def test_kl_in_the_loss_keeps_the_scores_and_the_loss_term(tmp_path):
    cfg = tiny_config(tmp_path, algo={"kl_coef": 0.1, "kl_in_reward": False})
    algo = get_algorithm("grpo", cfg)
    assert algo.spec.kl_in == "loss" and algo.actor_loss.kl_coef == 0.1
    assert "ref_logprobs" in algo.spec.learn_fields
    batch, fields = kl_batch()
    stages = FakeStages(cfg, fields)
    prepared = algo.prepare(stages, batch)
    assert stages.asked == [("scores", "old_logprobs", "ref_logprobs")]  # one call: submitted together
    assert torch.allclose(prepared.advantages, core.grpo_advantages(fields["scores"], batch.group_id,
                                                                    batch.response_mask))


# --- an algorithm written in a notebook cell, with its own spec -------------------------------------------


@dataclasses.dataclass
class MedianBaseline:
    """Group-relative: a sample's advantage is its score minus its prompt group's median score."""

    cfg: object
    name: str = "median_baseline"
    spec: AlgorithmSpec = AlgorithmSpec(group_relative=True)
    actor_loss: PolicyLoss = dataclasses.field(default_factory=lambda: PolicyLoss(kl_coef=0.0))

    def prepare(self, s, batch):
        batch = s.compute(batch, *self.spec.prepare_fields)
        median = torch.stack([batch.scores[batch.group_id == g].median() for g in batch.group_id])  # (B,)
        return batch.replace(advantages=(batch.scores - median)[:, None] * batch.response_mask)


def test_a_registered_algorithm_gets_its_group_check_from_validate_and_trains(tmp_path):
    register_algorithm("median_baseline", MedianBaseline)
    assert "median_baseline" in available_algorithms()
    with pytest.raises(ConfigError, match="rollout.n = 1: must be >= 2 for algo.name = 'median_baseline'"):
        tiny_config(tmp_path, algo="median_baseline", rollout={"prompts_per_step": 16, "n": 1, "max_new_tokens": 4})
    cfg = tiny_config(tmp_path, algo="median_baseline", actor={"mini_batch_size": 16, "micro_batch_size": 8,
                                                                "lr": 1e-3})
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        assert sorted(s.roles) == ["actor"]  # the spec asked for no reference model and no critic
        history = s.train(2)
    assert [h["step"] for h in history] == [1, 2]
    assert all(h["actor/optimizer_steps"] == 1 for h in history)
    assert any(abs(h["actor/pg_loss"]) > 0 for h in history)


def test_an_algorithm_object_is_checked_against_its_own_spec(tmp_path):
    cfg = tiny_config(tmp_path, rollout={"prompts_per_step": 16, "n": 1, "max_new_tokens": 4}, algo="ppo")
    with pytest.raises(ConfigError, match="rollout.n = 1: must be >= 2 for algo.name = 'median_baseline'"):
        rlkit.Session(cfg, algorithm=MedianBaseline(cfg), reward_fn=parity_reward)


# --- per-rank stats, epochs, compute, logging --------------------------------------------------------------


def test_reduce_rank_stats_by_hand():
    ranks = [
        {"actor/pg_loss": 0.5, "actor/update/seconds": 1.0, "actor/update/host_rss_gb": 2.0,
         "actor/update/tokens": 10.0, "actor/update/tokens_per_s": 10.0, "actor/update/mfu": 0.2},
        {"actor/pg_loss": 0.5, "actor/update/seconds": 3.0, "actor/update/host_rss_gb": 1.5,
         "actor/update/tokens": 30.0, "actor/update/tokens_per_s": 10.0, "actor/update/mfu": 0.4},
    ]
    assert reduce_rank_stats(ranks) == pytest.approx({
        "actor/pg_loss": 0.5,  # all-reduced on the workers: the same on every rank
        "actor/update/seconds": 3.0,  # the slowest rank
        "actor/update/host_rss_gb": 2.0,  # the fullest rank
        "actor/update/tokens": 40.0, "actor/update/tokens_per_s": 20.0,  # counts and rates add up
        "actor/update/mfu": 0.3,
    })


class RecordingRole:
    """Wraps a role handle: records `update` calls, and returns its result as if from two ranks."""

    def __init__(self, handle):
        self.handle, self.batches = handle, []

    def update(self, batch, *args, **kwargs):
        self.batches.append(batch)
        (result,) = self.handle.update(batch, *args, **kwargs)
        slower = {**result, "actor/update/seconds": result["actor/update/seconds"] + 100.0}
        return [result, slower]

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_ppo_epochs_reshuffle_the_minibatches_and_ranks_are_reduced(tmp_path):
    cfg = tiny_config(tmp_path, actor={"mini_batch_size": 8, "micro_batch_size": 8, "ppo_epochs": 2, "lr": 1e-3})
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        recorder = RecordingRole(s.roles["actor"])
        s.roles["actor"] = recorder
        batch = s.prepare(s.generate())
        stats = s.learn(batch)
        again = s.learn(batch)  # a re-run of the same cell replays the same orders
        s.steps_done += 1  # as s.step() does: the next step draws new ones
        s.learn(batch)
    replay, second = recorder.batches[1], recorder.batches[2]
    assert again["actor/optimizer_steps"] == 4
    first = recorder.batches[0]
    assert len(first) == 2 * len(batch)  # both epochs, laid end to end
    key = lambda b: [tuple(r) for r in torch.cat([b.response_ids, b.old_logprobs], -1).tolist()]  # noqa: E731
    epoch_a, epoch_b = key(first[:16]), key(first[16:])
    assert sorted(epoch_a) == sorted(epoch_b) == sorted(key(batch))  # each epoch sees every row once
    assert epoch_a != epoch_b  # ... in a new order (mini-batches differ between epochs)
    assert key(replay) == key(first)
    assert key(second) != key(first)  # the seed has the step
    assert stats["actor/update/seconds"] > 100  # the slowest of the two ranks, not rank 0's
    assert stats["actor/optimizer_steps"] == 4  # 2 epochs x 2 mini-batches


class FakeFuture:
    def __init__(self, log, name, value):
        self.log, self.name, self.value = log, name, value

    def result(self):
        self.log.append(f"join {self.name}")
        return self.value


class FakeMethod:
    def __init__(self, log, name, make):
        self.log, self.name, self.make = log, name, make

    def submit(self, batch, *args):
        self.log.append(f"submit {self.name}")
        return FakeFuture(self.log, self.name, self.make(batch))


def test_compute_submits_every_worker_call_before_joining_any(tmp_path):
    """With the calls in flight together, roles on separate devices overlap (BENCHMARKS.md: prepare overlap)."""
    from types import SimpleNamespace

    from rlkit.session import Session

    log: list[str] = []
    zeros = lambda field: lambda b: Batch(**{field: torch.zeros(b.response_mask.shape)}, batch_size=[len(b)])  # noqa: E731
    s = Session.__new__(Session)  # the primitives only: no workers
    s.config = tiny_config(tmp_path, algo="ppo")
    s.algo = get_algorithm("ppo", s.config)
    s.spec = s.algo.spec
    s.roles = {
        "actor": SimpleNamespace(compute_logprobs=FakeMethod(log, "actor", zeros("old_logprobs"))),
        "ref": SimpleNamespace(compute_logprobs=FakeMethod(log, "ref", zeros("ref_logprobs"))),
        "critic": SimpleNamespace(compute_values=FakeMethod(log, "critic", zeros("values"))),
    }
    s.reward_fn, s.cost_fn = (lambda text, truth, eos: (log.append("rule"), 1.0)[1]), None
    s.steps_done = 0  # reward errors name the step
    s.tokenizer = SimpleNamespace(decode=lambda ids, **kw: "x", eos_token_id=0, pad_token_id=0)
    batch, _ = kl_batch()
    batch = batch.replace(ground_truth=["1"] * 4)
    out = s.compute(batch, "scores", "old_logprobs", "ref_logprobs", "values")
    assert log[:3] == ["submit actor", "submit ref", "submit critic"]
    assert log.index("rule") < log.index("join actor")  # the rule reward runs while the workers do
    assert torch.equal(out.scores, torch.ones(4)) and out.values.shape == (4, 3)
    with pytest.raises(ValueError, match="cannot compute 'advantages'"):
        s.compute(batch, "advantages")


def test_log_every_writes_every_nth_step(tmp_path):
    cfg = tiny_config(tmp_path, logging={"run_dir": str(tmp_path), "run_name": "run", "dashboard": False,
                                         "log_every": 2})
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        history = s.train(3)
        run_dir = s.run_dir
    assert [h["step"] for h in history] == [1, 2, 3]  # every step is returned and kept ...
    lines = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2]  # ... and every 2nd one written
