"""Multi-turn rollouts (rlkit.envs.rollout): token in, token out; the loss mask; turn rewards; environments that
fail, hang or never end; the config and Session glue. One local-backend Session on the tiny model serves every
test: each builds its own `EnvRollout` around the Session's engine."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import rlkit
from rlkit.config import ConfigError, EnvConfig
from rlkit.envs import StepResult
from rlkit.envs.calls import run_calls
from rlkit.envs.guess_number import GuessNumber
from rlkit.envs.rollout import EnvError, EnvRollout
from rlkit.envs.turns import TurnEncoder
from rlkit.session_support import sampling_params


def guess_config(tmp_path, **extra) -> rlkit.Config:
    cfg = rlkit.Config.preset(
        "arithmetic-tiny", data={"source": "guess_number", "digits": 1, "train_size": 64, "eval_size": 8},
        env={"name": "guess_number", "max_turns": 3, "max_tokens": 40},
        rollout={"prompts_per_step": 4, "n": 2, "max_new_tokens": 5},
        actor={"mini_batch_size": 8, "micro_batch_size": 8}, critic={"micro_batch_size": 8},
        cluster={"backend": "local", "threads_per_worker": 1},
        logging={"run_dir": str(tmp_path), "run_name": None, "dashboard": False})
    return cfg.override(extra)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    with rlkit.Session(guess_config(tmp_path_factory.mktemp("env_rollout"))) as s:
        yield s


class Recorder:
    """The actor's generate, recording every call's prompts and sampled tokens."""

    def __init__(self, s):
        self.s, self.calls = s, []

    def __call__(self, prompts, params):
        out = self.s.roles["actor"].generate(prompts, params)
        self.calls.append((prompts, out))
        return out


def rollout_with(s, make_env, prompts=None, n=2, **env_fields):
    env_cfg = EnvConfig(**{"max_turns": 3, "max_tokens": 40, **env_fields})
    runner = EnvRollout(make_env, s.tokenizer, env_cfg, chat=True)
    record = Recorder(s)
    prompts = prompts if prompts is not None else s.next_prompts()
    batch = runner.rollout(record, prompts.replace(group_id=torch.arange(len(prompts))),
                           sampling_params(s.config.rollout, n=n))
    return batch, record, runner


# ---------------------------------------------------------------- token in, token out


def test_trained_tokens_are_the_sampled_tokens_across_turns(session):
    batch, record, runner = rollout_with(session, GuessNumber)
    assert len(record.calls) >= 2, "the tiny model should need several turns"
    # Rebuild every episode from the engine's own outputs: turn t's live rows are the rows still going.
    per_row = [[] for _ in range(len(batch))]
    per_row_logprobs = [[] for _ in range(len(batch))]
    live = list(range(len(batch)))
    for prompts, out in record.calls:
        assert len(out) == len(live)
        for i, row in enumerate(live):
            k = int(out.response_mask[i].sum())
            per_row[row].append(out.response_ids[i, :k].tolist())
            per_row_logprobs[row] += out.rollout_logprobs[i, :k].tolist()
        turns = [len(per_row[r]) for r in range(len(batch))]
        live = [r for r in live if batch.extra_info[r]["env"]["turns"] > turns[r]]
    for row in range(len(batch)):
        policy = batch.loss_mask[row].bool()
        sampled = [t for turn in per_row[row] for t in turn]
        assert batch.response_ids[row][policy].tolist() == sampled  # byte for byte, every turn
        assert batch.rollout_logprobs[row][policy].tolist() == per_row_logprobs[row]
        # every later turn's prompt is the trajectory so far: context + the same ids, never re-encoded
    for t, (prompts, out) in enumerate(record.calls[1:], start=1):
        row_ids = prompts.prompt_ids[0][prompts.prompt_mask[0].bool()].tolist()
        first_live = next(r for r in range(len(batch)) if len(per_row[r]) > t)
        full = batch.prompt_ids[first_live][batch.prompt_mask[first_live].bool()].tolist() + \
            batch.response_ids[first_live].tolist()
        assert full[:len(row_ids)] == row_ids


def test_environment_turns_are_the_template_increment_and_not_trained(session):
    batch, _, runner = rollout_with(session, GuessNumber)
    tok = session.tokenizer
    # The char template: a policy turn ends with <|eos|>, then "<|user|>feedback<|assistant|>" comes from the env.
    for row in range(len(batch)):
        ids = batch.response_ids[row][batch.response_mask[row].bool()].tolist()
        loss = batch.loss_mask[row][batch.response_mask[row].bool()].tolist()
        env_runs, current, previous = [], [], None  # (the policy token before the run, the run)
        for i, (token, trained) in enumerate(zip(ids, loss)):
            if not trained:
                current.append(token)
            elif current:
                env_runs.append((previous, current))
                current = []
            if trained:
                previous = token
        assert not current, "an episode ends on a policy turn"
        for before, run in env_runs:
            text = tok.decode(run)
            # a turn cut by rollout.max_new_tokens before its <|eos|>: the environment closes it
            closing = "" if before == tok.eos_token_id else "<|eos|>"
            assert text.startswith(closing + "<|user|>") and text.endswith("<|assistant|>"), text
    assert batch.loss_mask.sum() < batch.response_mask.sum()
    assert (batch.loss_mask <= batch.response_mask).all()
    # rollout log-probs exist only on the policy's tokens
    assert (batch.rollout_logprobs[batch.loss_mask == 0] == 0).all()


def test_rollout_logprobs_equal_the_trainers_on_policy_tokens(session):
    """No re-tokenisation drift: the trainer scores exactly the tokens the engine sampled, in their context."""
    batch, _, _ = rollout_with(session, GuessNumber)
    old = session.roles["actor"].compute_logprobs(batch, "old_logprobs").old_logprobs
    policy = batch.loss_mask.bool()
    assert (old[policy] - batch.rollout_logprobs[policy]).abs().max() < 1e-4


def test_turn_rewards_sum_to_the_score_and_fall_on_the_answered_turn(session):
    class Counting:
        """Reward 0.25 per turn, ends after the third."""

        def reset(self, sample):
            self.turns = 0
            return "count"

        def step(self, action_text):
            self.turns += 1
            return StepResult("again", reward=0.25, done=self.turns == 3)

    batch, _, _ = rollout_with(session, Counting, max_tokens=200)
    assert torch.equal(batch.scores, batch.turn_rewards.sum(-1))
    assert torch.allclose(batch.scores, torch.full((len(batch),), 0.75))
    for row in range(len(batch)):
        where = batch.turn_rewards[row].nonzero().flatten().tolist()
        assert len(where) == 3
        for col in where:  # the last token of a policy turn: trained, and the next token is not
            assert batch.loss_mask[row, col] == 1
            assert col + 1 >= batch.response_mask[row].sum() or batch.loss_mask[row, col + 1] == 0


def test_token_budget_and_max_turns_bound_every_episode(session):
    class Endless:
        def reset(self, sample):
            return "go"

        def step(self, action_text):
            return StepResult("more")

    batch, _, runner = rollout_with(session, Endless, max_turns=4, max_tokens=23)
    assert int(batch.response_mask.sum(-1).max()) <= 23
    assert all(e["env"]["turns"] <= 4 and not e["env"]["done"] for e in batch.extra_info)
    assert runner.last_stats["env/truncated_frac"] == 1.0 and runner.last_stats["env/done_frac"] == 0.0
    batch, _, runner = rollout_with(session, Endless, max_turns=2, max_tokens=200)
    assert [e["env"]["turns"] for e in batch.extra_info] == [2] * len(batch)


def test_an_info_key_once_reported_stays_in_the_stats(session):
    """A numeric info key seen in one rollout is reported (as 0) in later ones, so its curve has no gaps."""
    class Flaky:
        calls = 0

        def reset(self, sample):
            return "go"

        def step(self, action_text):
            Flaky.calls += 1
            return StepResult(None, done=True, info={"bonus": 1} if Flaky.calls <= 8 else {})

    _, _, runner = rollout_with(session, Flaky, max_turns=1)  # 8 episodes: every one reports bonus = 1
    assert runner.last_stats["env/bonus"] == 1.0
    batch = runner.rollout(Recorder(session), session.next_prompts().replace(group_id=torch.arange(4)),
                           sampling_params(session.config.rollout, n=2))
    assert runner.last_stats["env/bonus"] == 0.0 and all("bonus" not in e["env"] for e in batch.extra_info)


# ---------------------------------------------------------------- the loss mask


def test_environment_tokens_get_zero_gradient_in_the_policy_and_value_losses(session):
    from rlkit.algos import core
    from rlkit.algos.losses import PolicyLoss

    batch, _, _ = rollout_with(session, GuessNumber)
    policy = batch.loss_mask.bool()
    env_tokens = batch.response_mask.bool() & ~policy
    assert env_tokens.any()
    adv = core.grpo_advantages(batch.scores + torch.arange(len(batch)) * 0.1, batch.group_id, batch.policy_mask())
    assert (adv[env_tokens] == 0).all() and (adv[policy] != 0).any()
    logprobs = (batch.rollout_logprobs - 0.05 * torch.rand(batch.rollout_logprobs.shape)).requires_grad_(True)
    entropy = torch.zeros_like(logprobs, requires_grad=True)
    mb = batch.replace(advantages=torch.ones_like(logprobs), old_logprobs=batch.rollout_logprobs)
    loss, _ = PolicyLoss(agg="token-mean", entropy_coef=0.01)(
        {"logprobs": logprobs, "entropy": entropy}, mb, float(policy.sum()), float(len(batch)))
    loss.backward()
    assert (logprobs.grad[env_tokens] == 0).all() and (entropy.grad[env_tokens] == 0).all()
    assert (logprobs.grad[policy] != 0).all()
    # the critic: values and returns on policy tokens only
    values = torch.randn(logprobs.shape, requires_grad=True)
    value_loss, _ = core.value_loss(values, torch.zeros_like(values), torch.ones_like(values), batch.policy_mask(),
                                    clip=None, agg="token-mean")
    value_loss.backward()
    assert (values.grad[env_tokens] == 0).all() and (values.grad[policy] != 0).all()


def test_gae_skips_environment_tokens_and_turn_rewards_reach_earlier_turns():
    """Hand-computed: two policy turns of 2 tokens with 2 environment tokens between; gamma = lam = 1."""
    from rlkit.algos import core
    from rlkit.algos.shaping import token_level_rewards
    from rlkit.batch import Batch

    loss_mask = torch.tensor([[1, 1, 0, 0, 1, 1]])
    turn_rewards = torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.0, 1.0]])
    batch = Batch(response_mask=torch.ones_like(loss_mask), loss_mask=loss_mask, turn_rewards=turn_rewards,
                  scores=turn_rewards.sum(-1), batch_size=[1])
    kl = torch.full((1, 6), 0.1)
    rewards = token_level_rewards(batch, kl, coef=1.0)
    assert torch.allclose(rewards, torch.tensor([[-0.1, 0.4, 0.0, 0.0, -0.1, 0.9]]))
    values = torch.tensor([[0.1, 0.2, 9.0, 9.0, 0.3, 0.4]])  # environment-token values are never read
    adv, ret = core.gae(rewards, values, batch.policy_mask(), gamma=1.0, lam=1.0)
    # returns: suffix sums of the policy tokens' rewards: 1.1, 1.2, -, -, 0.8, 0.9
    assert torch.allclose(ret, torch.tensor([[1.1, 1.2, 0.0, 0.0, 0.8, 0.9]]))
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.5, 0.5]]))


# ---------------------------------------------------------------- environments that fail


class Raises:
    def reset(self, sample):
        return "hello"

    def step(self, action_text):
        raise KeyError("the environment broke")


class NotAString:
    def reset(self, sample):
        return "hello"

    def step(self, action_text):
        return StepResult(observation=12345)


class Hangs:
    def reset(self, sample):
        return "hello"

    def step(self, action_text):
        time.sleep(5)
        return StepResult("late")


@pytest.mark.parametrize("env, message", [
    (Raises, r"environment Raises, sample 0 \(ground_truth '\d'; episode 0 of its group\), turn 1: step\(\) "
             r"KeyError: 'the environment broke'"),
    # the place is named once, not twice
    (NotAString, r"environment NotAString, sample 0 \(ground_truth '\d'; episode 0 of its group\), turn 1: step\(\) "
                 r"TypeError: the observation is int"),
    (Hangs, r"environment Hangs, sample 0 .*turn 1: step\(\) timed out: did not return within 0.3 s"),
])
def test_a_failing_environment_is_named_with_sample_and_turn(session, env, message):
    with pytest.raises(EnvError, match=message):
        rollout_with(session, env, on_error="raise", step_timeout_s=0.3)
    # on_error = "end": the episode ends where it is, the rollout goes on, the failure is counted
    batch, _, runner = rollout_with(session, env, on_error="end", step_timeout_s=0.3)
    assert all(e["env"]["error"] and "turn 1" in e["env"]["error"] for e in batch.extra_info)
    key = "env/timeouts" if env is Hangs else "env/errors"
    assert runner.last_stats[key] == len(batch)
    assert (batch.scores == 0).all() and (batch.loss_mask.sum(-1) > 0).all()


def test_a_reset_that_returns_nonsense_is_named(session):
    class BadReset:
        def reset(self, sample):
            return 3.5

        def step(self, action_text):
            return StepResult(None, done=True)

    with pytest.raises(EnvError, match=r"environment BadReset, sample 0 .*turn 0: reset\(\) TypeError: reset\(\) "
                                       r"returned float"):
        rollout_with(session, BadReset, on_error="raise")


def test_a_slow_environment_does_not_hold_the_others():
    """run_calls: calls overlap (8 threads), and a hung call is cut at its deadline while the rest finish."""
    spans = []
    lock = threading.Lock()

    def work(i):
        start = time.perf_counter()
        time.sleep(0.2)
        with lock:
            spans.append((start, time.perf_counter()))
        return i

    out = run_calls([lambda i=i: work(i) for i in range(8)], num_workers=8, timeout_s=None)
    assert [o.value for o in out] == list(range(8))
    latest_start, earliest_end = max(s for s, _ in spans), min(e for _, e in spans)
    assert latest_start < earliest_end  # all eight were running at once
    event = threading.Event()
    out = run_calls([lambda: event.wait(30), lambda: "quick", lambda: 1 / 0], num_workers=1, timeout_s=0.2)
    event.set()
    assert type(out[0].error).__name__ == "CallTimeout"
    assert out[1].value == "quick" and isinstance(out[2].error, ZeroDivisionError)


# ---------------------------------------------------------------- chat templates


def test_turn_encoder_with_a_template_that_writes_text_after_the_end_marker():
    """A ChatML-like template (a newline after each end marker, tool results wrapped): the environment's ids are
    what the template adds after the marker; a turn cut before its marker gets the marker as an env token."""
    from rlkit.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}<|user|>\n<tool_response>{{ m['content'] }}"
        "</tool_response><|eos|>\n{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|eos|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    enc = TurnEncoder(tok, chat=True)
    assert enc.end_of_turn_text == "<|eos|>" and enc.end_of_turn_ids == [tok.eos_token_id]
    assert tok.decode(enc.first("Guess")) == "<|user|>\nGuess<|eos|>\n<|assistant|>\n"
    assert tok.decode(enc.next("higher", turn_ended=True)) == "\n<|user|>\nhigher<|eos|>\n<|assistant|>\n"
    assert tok.decode(enc.next([{"role": "tool", "content": "42"}], turn_ended=False)) == \
        "<|eos|>\n<|user|>\n<tool_response>42</tool_response><|eos|>\n<|assistant|>\n"


def test_plain_text_turns_without_a_chat_template(session):
    enc = TurnEncoder(session.tokenizer, chat=False)
    assert session.tokenizer.decode(enc.next(" lower\n", turn_ended=True)) == " lower\n"
    with pytest.raises(TypeError, match="chat template is off"):
        enc.next([{"role": "user", "content": "x"}], turn_ended=True)


def test_tool_schemas_reach_the_chat_template(session):
    """An environment's `tools` go to the template's `tools=`: here a template that lists their names."""
    from rlkit.data.tokenizer import build_char_tokenizer
    from rlkit.envs.calculator import Calculator

    tok = build_char_tokenizer()
    tok.chat_template = ("{% if tools %}<|system|>tools: {% for t in tools %}{{ t['function']['name'] }}"
                         "{% endfor %}{% endif %}" + tok.chat_template)
    runner = EnvRollout(Calculator, tok, EnvConfig(), chat=True)
    assert tok.decode(runner.encoder.first("37*48=")) == "<|system|>tools: multiply<|user|>37*48=<|assistant|>"


def test_a_warm_start_episode_is_laid_out_as_a_rollout_lays_it_out(session):
    """`rlkit.envs.warmup.encode_episode` (what the warm start trains on) equals the ids and loss mask that
    `EnvRollout` builds when the engine samples the same actions."""
    from rlkit.batch import Batch
    from rlkit.envs.warmup import encode_episode, play

    tok = session.tokenizer
    assistant = tok.convert_tokens_to_ids("<|assistant|>")

    def act(history):  # guesses 1, 2, 3 ...
        return str(len(history) // 2 + 1)

    def scripted_generate(prompts, params):  # the same actions as token ids, turn = <|assistant|> tokens seen
        rows = []
        for ids, mask in zip(prompts.prompt_ids, prompts.prompt_mask):
            turn = int((ids[mask.bool()] == assistant).sum())
            rows.append(tok(str(turn), add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
        width = max(map(len, rows))
        out = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, :len(r)] = torch.tensor(r)
        return prompts.replace(response_ids=out, response_mask=(out != 0).long(),
                               rollout_logprobs=torch.zeros(out.shape))

    runner = EnvRollout(GuessNumber, tok, EnvConfig(max_turns=3, max_tokens=48), chat=True)
    prompts = session.prompts.eval_batch(3)
    batch = runner.rollout(scripted_generate, prompts.replace(group_id=torch.arange(3)),
                           sampling_params(session.config.rollout, n=1))
    for row in range(3):
        sample = {"ground_truth": prompts.ground_truth[row], "extra_info": prompts.extra_info[row]}
        ids, mask = encode_episode(runner.encoder, tok, play(GuessNumber(), sample, act, max_turns=3))
        got = batch.prompt_ids[row][batch.prompt_mask[row].bool()].tolist() + \
            batch.response_ids[row][batch.response_mask[row].bool()].tolist()
        got_mask = [0] * int(batch.prompt_mask[row].sum()) + batch.loss_mask[row][batch.response_mask[row].bool()].tolist()
        assert (got, got_mask) == (ids, mask)


# ---------------------------------------------------------------- config and Session (last: a new Session
# replaces the module's)


def test_env_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"env.name = 'chess': must be a built-in environment: 'guess_number', "
                                          r"'calculator'"):
        guess_config(tmp_path, **{"env.name": "chess"})
    with pytest.raises(ConfigError, match=r"env.max_turns = 0: must be >= 1"):
        guess_config(tmp_path, **{"env.max_turns": 0})
    with pytest.raises(ConfigError, match=r"env.on_error = 'ignore': must be one of 'end', 'raise'"):
        guess_config(tmp_path, **{"env.on_error": "ignore"})
    with pytest.raises(ConfigError, match=r"rollout.async_steps = 1: needs env.name = None"):
        guess_config(tmp_path, **{"rollout.async_steps": 1})


def test_session_steps_and_evaluates_with_an_environment(session):
    stats = session.step()
    assert stats["env/turns_mean"] >= 1 and "env/success" in stats
    assert session.last_batch.loss_mask is not None and session.last_batch.advantages is not None
    out = session.evaluate(num_prompts=4)
    assert 0.0 <= out["eval/accuracy"] <= 1.0


def test_session_rejects_an_env_without_reset_and_step_before_workers_start(tmp_path):
    class NoStep:
        def reset(self, sample):
            return "x"

    with pytest.raises(TypeError, match=r"env: NoStep makes NoStep objects, which have no step method"):
        rlkit.Session(guess_config(tmp_path, **{"env.name": None}), env=NoStep)


def test_ppo_learns_on_episodes_with_values_on_policy_tokens(tmp_path):
    with rlkit.Session(guess_config(tmp_path, algo="ppo")) as s:
        batch = s.prepare(s.generate())
        env_tokens = batch.response_mask.bool() & ~batch.loss_mask.bool()
        assert (batch.advantages[env_tokens] == 0).all() and (batch.returns[env_tokens] == 0).all()
        stats = s.learn(batch)
    assert "critic/loss" in stats or any(k.startswith("critic/") for k in stats)


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "dapo", "gspo", "rloo", "remax", "reinforce_pp", "safe_rlhf"])
def test_every_algorithm_takes_a_step_on_episodes(tmp_path, algo):
    """The GRPO family, ReMax (its greedy baseline is a greedy episode), DAPO (refills are episodes too),
    REINFORCE++ (turn rewards through the token-level return) and Safe-RLHF (a rule cost) train on episodes,
    with no advantage on environment tokens. (PPO: the test above.)"""
    # DAPO keeps only groups whose rewards differ: with the untrained model some rounds keep few, so its
    # mini-batches are one group (n = 2 rows)
    extra = {"algo.dynamic_sampling": True, "actor.mini_batch_size": 2, "actor.micro_batch_size": 2,
             "critic.micro_batch_size": 2} if algo == "dapo" else {}
    cost = (lambda text, truth, eos: float(len(text) > 30)) if algo == "safe_rlhf" else None
    with rlkit.Session(guess_config(tmp_path, algo=algo, **extra), cost_fn=cost) as s:
        batch = s.prepare(s.generate())
        env_tokens = batch.response_mask.bool() & ~batch.loss_mask.bool()
        assert env_tokens.any() and (batch.advantages[env_tokens] == 0).all()
        if algo == "remax":
            assert batch.baseline_scores is not None
        stats = s.learn(batch)
        assert stats["actor/tokens"] == float(batch.loss_mask.sum())  # trained on the policy's tokens only
