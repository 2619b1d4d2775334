"""Every algorithm must LEARN through the whole pipeline (Session stages, workers, rollout engine).

The task is a rule an untrained tiny model meets about half the time (the first
character of the response is odd), so each algorithm has a clear signal within a
few steps and the test stays fast: the mean training reward of the last steps must
be well above that of the first ones. Safe-RLHF gets a cost rule instead (the first
character is a letter) and must bring the mean cost under its limit without losing
reward.

The harder target of the algorithms issue (+10 points of greedy accuracy on the
arithmetic task from an SFT checkpoint) is not met yet: see the project's issue
notes and BENCHMARKS.md.
"""

from __future__ import annotations

import pytest

import rlkit

pytestmark = pytest.mark.slow

STEPS = 20


def odd_first_char(text: str, ground_truth, eos_seen: bool) -> float:
    return float(bool(text) and ord(text[0]) % 2 == 1)


def letter_first_char(text: str, ground_truth, eos_seen: bool) -> float:
    return float(bool(text) and text[0].isalpha())


def rl_config(algo: str, tmp_path, **extra):
    cfg = rlkit.Config.preset(
        "arithmetic-tiny",
        algo=algo,
        rollout={"prompts_per_step": 8, "n": 4, "max_new_tokens": 1},
        # from a random init a large step size is what the rule task needs (the preset's 1e-5 is for SFT policies)
        actor={"lr": 1e-3, "mini_batch_size": 16, "micro_batch_size": 16},
        critic={"lr": 1e-3, "micro_batch_size": 16},
        cluster={"backend": "local", "threads_per_worker": 1},
        logging={"run_dir": str(tmp_path), "run_name": algo, "dashboard": False},
    )
    return cfg.override(extra)


def mean(values):
    return sum(values) / len(values)


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "remax", "reinforce_pp", "ppo"])
def test_algorithm_learns(tmp_path, algo):
    with rlkit.Session(rl_config(algo, tmp_path), reward_fn=odd_first_char) as s:
        rewards = [h["reward/mean"] for h in s.train(STEPS)]
    first, last = mean(rewards[:3]), mean(rewards[-3:])
    print(f"{algo}: train reward {first:.3f} -> {last:.3f}")
    assert last >= first + 0.2, f"{algo} did not learn: reward {first:.2f} -> {last:.2f}"


def test_safe_rlhf_brings_cost_under_its_limit(tmp_path):
    limit = 0.3
    cfg = rl_config("safe_rlhf", tmp_path, **{"algo.cost_limit": limit, "algo.lagrange_lr": 0.5})
    with rlkit.Session(cfg, reward_fn=odd_first_char, cost_fn=letter_first_char) as s:
        history = s.train(2 * STEPS)  # the multiplier has to grow before the cost falls
    costs = [h["cost/mean"] for h in history]
    rewards = [h["reward/mean"] for h in history]
    print(f"safe_rlhf: cost {mean(costs[:3]):.3f} -> {mean(costs[-3:]):.3f}, "
          f"reward {mean(rewards[:3]):.3f} -> {mean(rewards[-3:]):.3f}, lambda {history[-1]['safe/lambda']:.2f}")
    assert mean(costs[:3]) > limit + 0.1, "void test: the untrained policy already meets the limit"
    assert mean(costs[-3:]) <= limit
    assert mean(rewards[-3:]) >= mean(rewards[:3]) - 0.05
