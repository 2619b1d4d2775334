"""Multi-turn rollouts (rlkit.envs.rollout) on the vLLM engine: token in, token out across turns, rollout
log-probs equal to the trainer's on policy tokens, and a full RL step (its weight sync included) between two
rollouts. The hf engine's version of these checks is tests/test_env_rollout.py.

Only where vLLM imports (`make test-vllm`, the `.venv-vllm` environment); skipped elsewhere with the reason.
One local-backend Session on `qwen2-1m` (vLLM's CPU attention needs head_dim >= 32; the hf tests' qwen2-tiny has
16) serves every test. Its own environment, `Distinct`, rewards each turn by the reply's distinct characters, so
the rewards of a group differ and GRPO's step really moves the policy; the built-in `guess_number` runs on the
same engine through an `EnvRollout` of its own.
"""

from __future__ import annotations

import os

import pytest
import torch

import rlkit
from rlkit.config import EnvConfig
from rlkit.envs import StepResult
from rlkit.envs.guess_number import GuessNumber
from rlkit.envs.rollout import EnvRollout
from rlkit.session_support import sampling_params
from tests.test_env_rollout import Recorder  # the actor's generate (here the vLLM engine), recording every call

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _vllm_missing() -> str | None:
    from rlkit.rollout.vllm_engine import vllm_import_error

    return vllm_import_error()


VLLM_MISSING = _vllm_missing()
pytestmark = [pytest.mark.vllm, pytest.mark.skipif(
    VLLM_MISSING is not None, reason=f"vLLM is not importable here ({VLLM_MISSING}); run `make test-vllm`")]

ENV = {"max_turns": 3, "max_tokens": 40}


class Distinct:
    """Three turns; each reply earns 0.1 per distinct character (different samples, different rewards)."""

    def reset(self, sample):
        self.turns = 0
        return "Say something"

    def step(self, action_text):
        self.turns += 1
        return StepResult("more", reward=0.1 * len(set(action_text)), done=self.turns == 3)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    cfg = rlkit.Config.preset(
        "arithmetic-tiny", model={"preset": "qwen2-1m"},
        data={"source": "guess_number", "digits": 1, "train_size": 64, "eval_size": 8},
        env=ENV, rollout={"prompts_per_step": 4, "n": 2, "max_new_tokens": 5, "engine": "vllm", "sync_bucket_mb": 1},
        # lr 1e-2 (not the preset's 1e-5): one step must move the log-probs well past the 1e-4 tolerance
        actor={"mini_batch_size": 8, "micro_batch_size": 8, "lr": 1e-2}, critic={"micro_batch_size": 8},
        cluster={"backend": "local", "threads_per_worker": 1},
        logging={"run_dir": str(tmp_path_factory.mktemp("env_vllm")), "run_name": None, "dashboard": False})
    with rlkit.Session(cfg, env=Distinct) as s:
        yield s


def policy_turn_starts(loss_mask: torch.Tensor) -> list[int]:
    """(T,) loss mask of one row -> the first position of each policy turn."""
    flags = loss_mask.tolist()
    return [t for t, flag in enumerate(flags) if flag and (t == 0 or not flags[t - 1])]


def masked_max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float((a - b)[mask.bool()].abs().max())


@pytest.mark.parametrize("make_env", [GuessNumber, Distinct])
def test_trained_tokens_are_the_vllm_sampled_tokens_across_turns(session, make_env):
    runner = EnvRollout(make_env, session.tokenizer, EnvConfig(**ENV), chat=True)
    record = Recorder(session)
    prompts = session.next_prompts()
    batch = runner.rollout(record, prompts.replace(group_id=torch.arange(len(prompts))),
                           sampling_params(session.config.rollout))
    assert len(record.calls) >= 2, "the episodes should need several turns"
    contexts = [batch.prompt_ids[r][batch.prompt_mask[r].bool()].tolist() for r in range(len(batch))]
    starts = [policy_turn_starts(batch.loss_mask[r]) for r in range(len(batch))]
    for turn, (turn_prompts, out) in enumerate(record.calls):
        live = [r for r in range(len(batch)) if len(starts[r]) > turn]  # the rows still going at this turn
        assert len(out) == len(turn_prompts) == len(live)
        for i, row in enumerate(live):
            # this turn's prompt is the trajectory so far, byte for byte: context + every earlier turn's ids
            start = starts[row][turn]
            sent = turn_prompts.prompt_ids[i][turn_prompts.prompt_mask[i].bool()].tolist()
            assert sent == contexts[row] + batch.response_ids[row, :start].tolist(), (turn, row)
            # ... and what vLLM sampled is what is trained, with vLLM's log-probs
            k = min(int(out.response_mask[i].sum()), ENV["max_tokens"] - start)  # past the budget: dropped
            assert batch.response_ids[row, start:start + k].tolist() == out.response_ids[i, :k].tolist()
            assert batch.loss_mask[row, start:start + k].all() and \
                (start + k == int(batch.response_mask[row].sum()) or batch.loss_mask[row, start + k] == 0)
            assert torch.equal(batch.rollout_logprobs[row, start:start + k], out.rollout_logprobs[i, :k])
    assert (batch.rollout_logprobs[batch.loss_mask == 0] == 0).all()
    assert batch.loss_mask.sum() < batch.response_mask.sum()  # environment turns are there, untrained


def test_vllm_rollout_logprobs_equal_the_trainers_on_policy_tokens(session):
    """Session.rollout with the session's environment: the trainer scores exactly what vLLM sampled."""
    batch = session.rollout(session.next_prompts())
    assert batch.loss_mask is not None and batch.turn_rewards is not None
    assert max(e["env"]["turns"] for e in batch.extra_info) >= 2
    old = session.compute_old_logprobs(batch, force=True).old_logprobs
    assert masked_max_diff(old, batch.rollout_logprobs, batch.loss_mask) < 1e-4


def test_a_full_step_syncs_vllm_and_the_next_rollout_samples_the_new_policy(session):
    stats = session.step()  # generate (episodes) + prepare + learn + weight sync
    assert stats["env/turns_mean"] >= 2 and stats["weight_sync/bytes"] > 0
    batch = session.last_batch
    assert batch.advantages[batch.loss_mask.bool()].abs().max() > 0  # GRPO had something to learn from
    moved = session.compute_old_logprobs(batch, force=True).old_logprobs
    assert masked_max_diff(moved, batch.rollout_logprobs, batch.loss_mask) > 1e-3  # the policy did change
    assert all(report["mode"] == "current" for report in session.roles["actor"].sync_weights())  # learn synced

    after = session.rollout(session.next_prompts())
    assert all(sync["synced"] == 0 for sync in session.roles["actor"].last_sync())  # no fallback sync needed
    assert max(e["env"]["turns"] for e in after.extra_info) >= 2
    old = session.compute_old_logprobs(after, force=True).old_logprobs
    assert masked_max_diff(old, after.rollout_logprobs, after.loss_mask) < 1e-4  # vLLM has the new weights
