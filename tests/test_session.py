"""The Session's stages on a tiny model: fields filled, re-runnable, replayable, custom algorithms."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import rlkit
from rlkit.data.arithmetic import arithmetic_reward
from rlkit.algos import core
from rlkit.batch import Batch


def tiny_config(tmp_path, **overrides):
    base = dict(
        logging={"run_dir": str(tmp_path), "run_name": "run", "dashboard": False},
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4},
        actor={"mini_batch_size": 16, "micro_batch_size": 8},
        critic={"micro_batch_size": 8},
    )
    base.update(overrides)
    return rlkit.Config.preset("arithmetic-tiny", **base)


def parity_reward(text: str, ground_truth, eos_seen: bool) -> float:
    """A rule an untrained model scores about half the time on (the arithmetic reward is ~always 0)."""
    return float(bool(text) and ord(text[0]) % 2 == 1)


@pytest.fixture
def session(ray_cluster, tmp_path):
    s = rlkit.Session(tiny_config(tmp_path), reward_fn=parity_reward)
    yield s
    s.close()


def test_stages_fill_the_batch_and_rerun(session):
    prompts = session.next_prompts()
    assert len(prompts) == 4
    batch = session.generate(prompts)
    assert len(batch) == 16 and batch.rollout_logprobs is not None
    # 4 samples of each prompt share its group id, in prompt order
    assert batch.group_id.tolist() == [g for g in range(4) for _ in range(4)]
    assert batch.prompt_text[:4] == [prompts.prompt_text[0]] * 4

    prepared = session.prepare(batch)
    for name in ("scores", "costs", "old_logprobs", "ref_logprobs", "advantages"):
        assert getattr(prepared, name) is not None, name
    # the trainer's log-probs of the sampled tokens are the engine's (same weights, same temperature)
    mask = prepared.response_mask.bool()
    assert (prepared.old_logprobs - prepared.rollout_logprobs)[mask].abs().max() < 1e-4
    # before any update the reference is the policy
    assert (prepared.old_logprobs - prepared.ref_logprobs)[mask].abs().max() < 1e-5
    # prepare is a pure function of the batch and the weights: re-running gives the same fields
    again = session.prepare(batch)
    assert torch.equal(again.advantages, prepared.advantages)
    expected = core.grpo_advantages(prepared.scores, prepared.group_id, prepared.response_mask)
    assert torch.allclose(prepared.advantages, expected)

    assert prepared.advantages.abs().sum() > 0  # the parity rule splits groups
    stats = session.learn(prepared)
    for key in ("time/learn", "actor/pg_loss", "actor/entropy", "actor/lr", "memory/actor/rss_gib"):
        assert key in stats, key
    # the weights moved: the same tokens now have other log-probs
    after = session.compute_old_logprobs(prepared)
    assert (after.old_logprobs - prepared.old_logprobs)[mask].abs().max() > 1e-6


def test_learn_without_prepare_names_the_missing_fields(session):
    batch = session.generate()
    with pytest.raises(ValueError, match="advantages, old_logprobs.*prepare"):
        session.learn(batch)


def test_step_writes_stats_and_history(session, tmp_path):
    stats = session.step()
    assert stats["step"] == 1
    for key in ("time/generate", "time/prepare", "time/learn", "time/step", "reward/mean",
                "throughput/generate_tokens_per_s", "sync/seconds", "sync/bytes", "sync/peak_extra_bytes"):
        assert key in stats, key
    lines = (session.run_dir / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 1 and '"step": 1' in lines[0]
    # evaluate() scores with the run's reward rule (parity here): greedy accuracy is the share of eval
    # prompts whose greedy reply meets it, and the mean reward equals it for a 0/1 rule
    from rlkit.workers.reward_model import rule_scores

    greedy = session.rollout(session.prompts.eval_batch(8), greedy=True)
    expected = float(rule_scores(greedy, parity_reward, session.tokenizer).mean())
    out = session.evaluate(num_prompts=8, k=2)
    assert out["eval/accuracy"] == pytest.approx(expected) and out["eval/reward"] == pytest.approx(expected)
    # eval_fn given: the task's exact-match rule, which the untrained model never meets, greedy or sampled
    session.eval_fn = arithmetic_reward
    assert session.evaluate(num_prompts=8, k=2) == {"eval/accuracy": 0.0, "eval/reward": 0.0, "eval/pass@2": 0.0}


def test_prepared_batch_replays_learn_with_identical_stats(ray_cluster, tmp_path):
    """Stage replay: learn on a saved prepared batch in a fresh Session = the original learn call."""
    cfg = tiny_config(tmp_path)
    with rlkit.Session(cfg, reward_fn=parity_reward) as first:
        prepared = first.prepare(first.generate())
        path = prepared.save(tmp_path / "prepared.pt")
        original = first.learn(prepared)
    with rlkit.Session(cfg, reward_fn=parity_reward) as second:
        replay = second.learn(Batch.load(path))
    for key in ("actor/pg_loss", "actor/loss", "actor/grad_norm", "actor/entropy", "actor/clipfrac"):
        assert replay[key] == pytest.approx(original[key], rel=1e-6, abs=1e-9), key


# --- a custom algorithm written outside the package -------------------------------------------


@dataclasses.dataclass
class CenteredReinforceLoss:
    """Plain REINFORCE on token log-probs; reports a marker so the test sees it ran on the workers."""

    def __call__(self, outputs, mb, global_tokens, global_seqs):
        mask = mb.response_mask.to(outputs["logprobs"].dtype)
        loss = -(outputs["logprobs"] * mb.advantages * mask).sum() / global_tokens
        return loss, {"custom_marker": torch.tensor(1.0)}


@dataclasses.dataclass
class CenteredReinforce:
    """Advantage = score minus the batch mean score (a baseline no built-in algorithm uses)."""

    cfg: object
    name: str = "centered_reinforce"
    uses_critic: bool = False
    uses_reference: bool = False
    actor_loss: CenteredReinforceLoss = dataclasses.field(default_factory=CenteredReinforceLoss)

    def prepare(self, s, batch):
        batch = s.compute_old_logprobs(s.score(batch))
        centered = batch.scores - batch.scores.mean()
        return batch.replace(advantages=centered[:, None] * batch.response_mask)


def test_custom_algorithm_defined_in_a_test_file_trains(ray_cluster, tmp_path):
    cfg = tiny_config(tmp_path)
    with rlkit.Session(cfg, algorithm=CenteredReinforce(cfg), reward_fn=parity_reward) as s:
        history = s.train(2)
    assert [h["step"] for h in history] == [1, 2]
    assert all(h["actor/custom_marker"] == pytest.approx(1.0) for h in history)


def test_registered_algorithm_by_name(ray_cluster, tmp_path, monkeypatch):
    from rlkit.algos import base

    # registered for this test only: a name left in the registry changes other tests' "available:" lists
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    base.register_algorithm("centered_reinforce", CenteredReinforce)
    cfg = tiny_config(tmp_path, algo="centered_reinforce")
    with rlkit.Session(cfg) as s:
        assert s.algo.name == "centered_reinforce"
        assert "ref" not in s.roles  # the algorithm said it needs no reference model


def test_unknown_algorithm_is_a_clear_error_before_any_worker_starts(tmp_path):
    with pytest.raises(ValueError, match="algo.name = 'nope': unknown algorithm.*grpo"):
        tiny_config(tmp_path, algo="nope")
    with pytest.raises(ValueError, match="did you mean 'safe_rlhf'"):
        tiny_config(tmp_path, algo="safe-rlhf")


@pytest.mark.parametrize("placement", ["split", "auto"])
def test_placements_build_groups_that_train(ray_cluster, tmp_path, placement):
    """"split" puts the actor and the other roles in separate processes; "auto" asks the planner."""
    cfg = tiny_config(tmp_path, algo="ppo", cluster={"placement": placement})
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        placed = sorted(r for names, _ in s.placement for r in names)
        assert placed == ["actor", "critic", "ref"]
        if placement == "split":
            assert len(s.groups) == 2 and s.groups[0].pids != s.groups[1].pids
        stats = s.step()
    assert "critic/vf_loss" in stats or "critic/loss" in stats


def test_skip_old_logprobs_gives_the_same_update_with_one_forward_less(tmp_path):
    """With one on-policy optimizer step per batch, old log-probs = the loss's own (detached): same update."""
    def one_step(skip: bool, mini: int):
        cfg = tiny_config(tmp_path / f"{skip}-{mini}", cluster={"backend": "local", "threads_per_worker": 1},
                          actor={"mini_batch_size": mini, "micro_batch_size": 8, "lr": 1e-3, "skip_old_logprobs": skip})
        with rlkit.Session(cfg, reward_fn=parity_reward) as s:
            prepared = s.prepare(s.generate(s.next_prompts()))
            stats = s.learn(prepared)
            after = s.compute_old_logprobs(prepared, force=True).old_logprobs
        return prepared, stats, after

    computed, stats, after = one_step(False, 16)
    skipped, stats_skip, after_skip = one_step(True, 16)
    assert computed.old_logprobs is not None and skipped.old_logprobs is None
    assert torch.equal(skipped.response_ids, computed.response_ids)  # same seed: the same rollout
    for key in ("actor/pg_loss", "actor/kl", "actor/entropy", "actor/grad_norm"):
        assert stats_skip[key] == pytest.approx(stats[key], rel=1e-4, abs=1e-6), key
    assert stats["actor/clipfrac"] == stats_skip["actor/clipfrac"] == 0.0
    mask = computed.response_mask.bool()
    assert (after_skip - after)[mask].abs().max() < 1e-5  # the same weights after the update
    assert (after - computed.old_logprobs)[mask].abs().max() > 1e-3  # ... which did move

    two_minibatches, _, _ = one_step(True, 8)  # two optimizer steps: the second needs the real old log-probs
    assert two_minibatches.old_logprobs is not None


def test_gather_weights_always_generates_the_same_tokens_from_one_gathered_copy(tmp_path):
    def rollout(mode: str):
        # FSDP2 on the one rank (as bf16 on one GPU): "auto" then leaves FSDP's per-layer copy in place
        cfg = tiny_config(tmp_path / mode, cluster={"backend": "local", "threads_per_worker": 1, "shard_one_rank": True},
                          rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4, "gather_weights": mode})
        with rlkit.Session(cfg, reward_fn=parity_reward) as s:
            batch = s.generate(s.next_prompts())
            return batch, s.roles["actor"].last_sync()[0]

    per_layer, sync_auto = rollout("auto")
    gathered, sync_always = rollout("always")
    assert (sync_auto["mode"], sync_always["mode"]) == ("per-layer", "gathered")
    assert sync_auto["bytes"] == 0 and sync_always["bytes"] > 0  # the one full copy the gather made
    assert torch.equal(per_layer.response_ids, gathered.response_ids)
    assert torch.allclose(per_layer.rollout_logprobs, gathered.rollout_logprobs, atol=1e-6)


def test_evaluate_in_chunks_counts_every_prompt_once(tmp_path):
    """evaluate() runs one rollout batch (16 samples here) at a time: 40 prompts are 3 greedy chunks."""
    from rlkit.workers.reward_model import rule_scores

    cfg = tiny_config(tmp_path, cluster={"backend": "local", "threads_per_worker": 1})
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        s.eval_fn = parity_reward  # an untrained model meets it about half the time
        prompts = s.prompts.eval_batch(40)
        whole = s.rollout(prompts, greedy=True)  # all 40 at once: what the chunks must add up to
        expected = float((rule_scores(whole, parity_reward, s.tokenizer) > 0.5).float().mean())
        assert 0 < expected < 1
        assert s.evaluate(num_prompts=40)["eval/accuracy"] == pytest.approx(expected)
        # pass@4: 16 // 4 = 4 prompts per chunk, 10 chunks; a rule every response meets solves all 40
        s.eval_fn = lambda text, truth, eos: 1.0
        assert s.evaluate(num_prompts=40, k=4)["eval/pass@4"] == 1.0
        with pytest.raises(ValueError, match="no eval prompts"):
            s.evaluate(num_prompts=0)


def test_learn_ends_with_the_weight_sync_and_the_next_generate_makes_none(tmp_path):
    cfg = tiny_config(tmp_path, cluster={"backend": "local", "threads_per_worker": 1})
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        batch = s.prepare(s.generate())
        stats = s.learn(batch)
        assert "time/sync" in stats and stats["weight_sync/bytes"] == 0  # hf: generates on the actor's own weights
        assert s.monitor.stages["sync"]["time/sync"] == stats["time/sync"]  # its own stage (and dashboard point)
        assert s.dashboard.stage_counts["sync"] == 1
        s.generate()
        assert s.monitor.stages["generate"]["rollout/fallback_sync"] == 0.0  # the weights were current
        # An update made behind the Session's back (the role called directly) leaves the engine stale:
        # the next generate syncs first and says so.
        s.roles["actor"].update(batch, s.algo.actor_loss)
        with pytest.warns(UserWarning, match="sync_weights"):
            s.generate()
        assert s.monitor.stages["generate"]["rollout/fallback_sync"] == 1.0
