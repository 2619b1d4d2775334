"""rlkit.rewards: answer extraction and equivalence, format/length/combine rules, loading reward functions in
rlkit's and verl's conventions, the threaded runner (extras, async, timeout) and its errors, the `reward`
config section, and the default rule of `task_rules`. No Ray and no workers, except one local Session."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import numpy as np
import pytest
import torch

import rlkit
from rlkit.config import Config, ConfigError, config_from_args
from rlkit.rewards import (
    RewardError, RewardRow, RewardTimeoutError, as_reward_function, boxed_format_reward, combine, extract_answer,
    extras_stats, format_reward, length_penalty, load_reward_fn, math_equal, math_reward, score_rows,
    think_format_reward,
)

# ---------------------------------------------------------------------------------------------------- math


@pytest.mark.parametrize("text, answer", [
    ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),          # nested braces
    ("\\boxed{1} then \\boxed{{2}+{3}}", "{2}+{3}"),                       # the last boxed, braces balanced
    ("first \\boxed{4} then \\boxed{5", "4"),                               # an unclosed one is skipped
    ("\\boxed 7 done", "7"),                                               # no braces
    ("\\boxed{9} #### 8 the answer is 7", "9"),                            # boxed beats everything
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),                    # GSM8K
    ("#### 1,234 the answer is 5", "1,234"),                               # #### beats "the answer is"
    ("3 + 4 = 7, so the answer is 7. Check: 7 - 4 = 3", "7"),               # "the answer is" beats last number
    ("I think the answer is 5. No wait, the answer is 6.", "6"),           # the last "answer is"
    ("The final answer is: $1,234.", "1,234"),
    ("Final answer: -7", "-7"),
    ("The answer is B.", "B"),                                             # no number: the phrase
    ("Answering quickly: 5, then 6", "6"),                                 # "Answering" is no marker
    ("the answers: 4 and the answer isn't 3, it is 9", "9"),               # nor "answers", "isn't"
    ("17 + 25 = 42", "42"),                                                # last number, not the first
    ("it was -3.5 degrees", "-3.5"),                                       # negative decimal
    ("10-3=7", "7"),
    ("x = 10-3", "3"),                                                     # a binary minus is no sign
    ("so (-3)", "-3"),
    ("she ate 3/4 of it.", "3/4"),                                         # fraction, sentence period
    ("a total of 1,234,567 people", "1,234,567"),                          # thousands commas
    ("the items 1,2,3", "3"),                                              # a list is not 123
    ("code 1,2345", "2345"),                                               # not a thousands group
    ("about .5 of it", ".5"),
    ("no number here at all", None),
    ("", None),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("pred, truth", [
    ("1.0", "1"), ("1.00", 1), ("+1", "1"), ("0.5", "1/2"), ("\\frac{1}{2}", "0.5"), ("\\dfrac{3}{4}", "0.75"),
    ("-\\frac{3}{4}", "-0.75"), ("1,234", "1234"), ("1,234.50", "1234.5"), ("$5", "5"), ("\\$5", "5"),
    ("50%", "50"), ("7.", "7"), ("x = 2", "2"), ("0.1", 0.1), ("3", 3.0), ("B", "b"), ("B.", " b "),
    ("7", ["6", "7"]),
])
def test_math_equal_true(pred, truth):
    assert math_equal(pred, truth)


@pytest.mark.parametrize("pred, truth", [
    ("1,2", "12"),          # "1,2" is not a thousands group: text, and "1,2" != "12"
    ("0.333", "1/3"),       # exact, no tolerance
    ("five", "5"),          # a number never equals a non-number
    (None, "1"),            # no answer found
    ("1", None),
    ("1/0", "0"),
    ("", ""),
    ("2", "-2"),
])
def test_math_equal_false(pred, truth):
    assert not math_equal(pred, truth)


def test_math_reward_extracts_and_needs_no_eos():
    assert math_reward("9 + 10 = 19", "19", eos_seen=True) == 1.0
    assert math_reward("9 + 10 = 19", "19", eos_seen=False) == 1.0   # cut off after the answer still counts
    assert math_reward("19 is wrong, it is 20", "19", eos_seen=True) == 0.0
    assert math_reward("so \\boxed{0.5}", "1/2", eos_seen=True) == 1.0
    assert math_reward("I get 72.", "She sold 48 + 24 clips.\n#### 72", True) == 1.0   # a GSM8K solution as truth
    assert math_reward("I get 72.", 72, True) == 1.0                                   # a numeric truth
    assert math_reward("no idea", "7", True) == 0.0


# ---------------------------------------------------------------------------------------------------- format / shaping


def test_format_rewards():
    assert think_format_reward("<think>3 + 4 = 7</think> 7", None, True) == 1.0
    assert think_format_reward("  <think>a\nb</think>\n\\boxed{7}\n", None, False) == 1.0   # spans lines
    assert think_format_reward("<think>3 + 4</think>", None, True) == 0.0                   # no answer after it
    assert think_format_reward("7 <think>x</think> 7", None, True) == 0.0                   # not at the start
    tagged = format_reward(r"<answer>\d+</answer>", mode="search", require_eos=True, name="answer_tag")
    assert tagged.__name__ == "answer_tag"
    assert tagged("so <answer>12</answer> ok", None, True) == 1.0
    assert tagged("so <answer>12</answer> ok", None, False) == 0.0   # cut off by the length limit
    assert tagged("so <answer>x</answer>", None, True) == 0.0
    assert boxed_format_reward("thus \\boxed{\\frac{1}{2}}", None, True) == 1.0
    assert boxed_format_reward("thus \\boxed{}", None, True) == 0.0
    assert boxed_format_reward("thus 1/2", None, True) == 0.0
    with pytest.raises(ValueError, match="mode='prefix'"):
        format_reward("x", mode="prefix")


def test_length_penalty_hand_computed():
    one = lambda text, truth, eos: 1.0  # noqa: E731
    rule = length_penalty(one, max_chars=10, coef=0.1)
    assert rule("x" * 10, None, True) == 1.0                      # within the limit
    assert rule("x" * 15, None, True) == pytest.approx(0.5)        # 5 over * 0.1
    capped = length_penalty(one, max_chars=10, coef=0.1, max_penalty=0.3)
    assert capped("x" * 15, None, True) == pytest.approx(0.7)
    as_dict = length_penalty(lambda t, g, e: {"score": 2.0, "acc": 1.0}, max_chars=0, coef=0.5)
    assert as_dict("abc", None, True) == {"score": 0.5, "acc": 1.0, "length_penalty": 1.5}
    assert rule.__name__ == "length_penalty(<lambda>)"

    async def async_one(text, truth, eos):
        return 1.0

    assert asyncio.run(length_penalty(async_one, 2, 0.25)("abcd", None, True)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_chars"):
        length_penalty(one, max_chars=-1)


def test_combine_weights_and_logs_each_part():
    rule = combine((math_reward, 1.0), (think_format_reward, 0.5), (math_reward, 2.0))
    out = rule("<think>4 + 3</think> 7", "7", True)
    assert out == {"score": 1.0 + 0.5 + 2.0, "math_reward": 1.0, "think_format_reward": 1.0, "math_reward_2": 1.0}
    assert rule("7", "7", True)["score"] == pytest.approx(3.0)   # no think block: the format part is 0
    scores, extras = score_rows(rule, [RewardRow("7", "7", True), RewardRow("<think>a</think> 8", "7", True)])
    assert scores.tolist() == [3.0, 0.5]
    assert extras_stats(extras) == {"reward/math_reward": 0.5, "reward/think_format_reward": 0.5,
                                    "reward/math_reward_2": 0.5}
    with pytest.raises(TypeError, match="pairs"):
        combine(math_reward)


# ---------------------------------------------------------------------------------------------------- loader

REWARD_FILE = '''
def exact(response_text, ground_truth, eos_seen):
    return float(response_text.strip() == ground_truth)

def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    return {"score": float(solution_str.strip() == ground_truth), "source_is_gsm8k": data_source == "gsm8k",
            "weight": extra_info["weight"], "pred": solution_str}

def _private(x):
    return x
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    return path


def test_load_reward_fn_both_styles(reward_file):
    verl = load_reward_fn(str(reward_file))                   # default name: verl's compute_score
    assert (verl.style, verl.name) == ("verl", "my_reward.py:compute_score")
    rlkit_rule = load_reward_fn(str(reward_file), "exact")   # auto: rlkit's parameter names
    assert rlkit_rule.style == "rlkit" and rlkit_rule("42 ", "42", True) == 1.0
    assert load_reward_fn(str(reward_file), "exact", "rlkit").style == "rlkit"
    rows = [RewardRow("42", "42", True, data_source="gsm8k", extra_info={"weight": 2}),
            RewardRow("41", "42", False, data_source="math", extra_info={"weight": 4})]
    scores, extras = score_rows(verl, rows)
    assert scores.tolist() == [1.0, 0.0]
    assert {k: v.tolist() for k, v in extras.items()} == {"source_is_gsm8k": [1.0, 0.0], "weight": [2.0, 4.0]}
    assert score_rows(rlkit_rule, rows)[0].tolist() == [1.0, 0.0]


def test_load_reward_fn_errors_name_the_field(reward_file, tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError, match=r"reward.path = .*nope.py.*no such file") as e:
        load_reward_fn(str(missing))
    assert str(missing) in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_reward_fn(str(reward_file), "score_fn")
    message = str(e.value)
    assert "reward.name = 'score_fn'" in message and "my_reward.py" in message
    assert "its functions: exact, compute_score" in message and "_private" not in message
    with pytest.raises(ConfigError, match=r"reward.style = 'verl'.*takes \(response_text, ground_truth, eos_seen\)"):
        load_reward_fn(str(reward_file), "exact", "verl")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError, match="reward.path = .*importing .*broken.py raised ModuleNotFoundError"):
        load_reward_fn(str(broken))
    with pytest.raises(ConfigError, match="no importable module"):
        load_reward_fn("no_such_pkg.rewards")


def test_load_reward_fn_from_a_module(tmp_path, monkeypatch):
    pkg = tmp_path / "rewardpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scoring.py").write_text("def compute_score(data_source, solution_str, ground_truth, extra_info):\n"
                                    "    return len(solution_str)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_reward_fn("rewardpkg.scoring")
    assert fn.name == "rewardpkg.scoring:compute_score" and fn.style == "verl"
    assert score_rows(fn, [RewardRow("abc", "", True)])[0].tolist() == [3.0]


def test_as_reward_function_detects_and_rejects():
    def verl_style(data_source, solution_str, ground_truth, extra_info):
        return 1

    assert as_reward_function(verl_style).style == "verl"
    assert as_reward_function(math_reward).style == "rlkit"
    assert as_reward_function(math_reward).name == "rlkit.rewards.math_answer:math_reward"
    with pytest.raises(TypeError, match="test_rewards:.*two_args: it takes \\(a, b\\)"):
        def two_args(a, b):
            return 0

        as_reward_function(two_args)
    with pytest.raises(TypeError, match="must be callable"):
        as_reward_function("math_reward")


# ---------------------------------------------------------------------------------------------------- runner

ROWS = [RewardRow(response_text=f"answer {i}", ground_truth=str(i), eos_seen=True,
                  prompt_text=f"<|system|>You are helpful.<|user|>Question number {i}: what is {i}?<|assistant|>")
        for i in range(6)]


def test_dict_results_become_extras():
    def rule(text, truth, eos):
        i = int(truth)
        out = {"score": i / 10, "acc": i % 2 == 0, "pred": text}   # a bool extra counts 0/1, a str is dropped
        if i < 2:
            out["only_some"] = 10.0 * (i + 1)                       # rows 2.. have none: NaN, left out of the mean
        return out

    scores, extras = score_rows(rule, ROWS, num_workers=3, timeout_s=5.0)
    assert scores.dtype == torch.float32 and scores.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert extras["acc"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert extras["only_some"][:2].tolist() == [10.0, 20.0] and torch.isnan(extras["only_some"][2:]).all()
    assert extras_stats(extras) == {"reward/acc": 0.5, "reward/only_some": 15.0}
    # "reward" is accepted as the score key; numpy scalars, ints and bools are numbers
    assert score_rows(lambda t, g, e: {"reward": np.float32(0.25)}, ROWS[:1])[0].tolist() == [0.25]
    assert score_rows(lambda t, g, e: int(g) % 2 == 1, ROWS[:3])[0].tolist() == [0.0, 1.0, 0.0]
    assert score_rows(lambda t, g, e: 2, ROWS[:1])[0].tolist() == [2.0]


def test_thread_pool_runs_calls_side_by_side():
    # Every call waits for three others: it completes only if 4 calls run at once (one thread would hang).
    barrier = threading.Barrier(4, timeout=5)

    def rendezvous(text, truth, eos):
        barrier.wait()
        return 1.0

    rows = ROWS[:4] * 2
    assert score_rows(rendezvous, rows, num_workers=4, timeout_s=10.0)[0].tolist() == [1.0] * 8
    with pytest.raises(RewardError, match="BrokenBarrierError"):  # a barrier of 4 with 2 threads: broken
        barrier = threading.Barrier(4, timeout=0.2)
        score_rows(rendezvous, rows, num_workers=2, timeout_s=10.0)


def test_async_rules_run_concurrently_and_in_a_notebook_loop():
    async def slow_len(text, truth, eos):
        await asyncio.sleep(0.3)
        return len(text)

    start = time.perf_counter()
    scores, _ = score_rows(slow_len, ROWS, num_workers=6, timeout_s=5.0)
    assert scores.tolist() == [8.0] * 6 and time.perf_counter() - start < 1.2   # 6 x 0.3 s side by side
    assert score_rows(slow_len, ROWS[:2], num_workers=1, timeout_s=None)[0].tolist() == [8.0, 8.0]   # in-line

    async def notebook_cell():  # a running event loop in the calling thread, as in Jupyter
        return score_rows(slow_len, ROWS[:2], num_workers=1, timeout_s=None)

    assert asyncio.run(notebook_cell())[0].tolist() == [8.0, 8.0]


def test_timeout_names_function_row_and_field():
    release = threading.Event()

    def hangs_on_row_3(text, truth, eos):
        if truth == "3":
            release.wait(10)
        return 0.0

    start = time.perf_counter()
    with pytest.raises(RewardTimeoutError) as e:
        score_rows(hangs_on_row_3, ROWS, num_workers=2, timeout_s=0.3, where="step 4")
    release.set()
    assert time.perf_counter() - start < 3
    message = str(e.value)
    assert "test_rewards:test_timeout_names_function_row_and_field.<locals>.hangs_on_row_3" in message
    assert "batch row 3 (step 4)" in message and "reward.timeout_s = 0.3" in message
    assert e.value.row == 3 and isinstance(e.value, TimeoutError)


def test_exception_names_function_row_prompt_and_response():
    def fails_on_row_2(text, truth, eos):
        if truth == "2":
            raise KeyError("missing_field")
        return 1.0

    for workers, timeout in ((1, None), (3, 5.0)):  # in-line and on the pool: the same message
        with pytest.raises(RewardError) as e:
            score_rows(fails_on_row_2, ROWS, num_workers=workers, timeout_s=timeout, where="step 7")
        message = str(e.value)
        assert "reward function tests.test_rewards:" in message and "fails_on_row_2 raised KeyError" in message
        assert "'missing_field'" in message and "batch row 2 (step 7)" in message
        assert "Question number 2: what is 2?" in message      # the prompt's end survives the cut
        assert "<|system|>You are helpful." in message          # and its start
        assert "response: 'answer 2'" in message
        assert isinstance(e.value.__cause__, KeyError) and e.value.row == 2


@pytest.mark.parametrize("value, problem", [
    ("0.5", "returned '0.5', but it is a str"),
    ("oops", "returned 'oops', but it is a str"),
    (None, "returned None, but it is a NoneType"),
    (float("nan"), "returned nan, but it is nan: a reward must be finite"),
    ([1.0], "but it is a list"),
    ({"acc": 1.0}, "dict without a 'score' (or 'reward') key; its keys: 'acc'"),
    ({"score": "1"}, "its 'score' is a str"),
    ({"score": 1.0, "mean": 2.0}, "the key 'mean', which is reserved"),
])
def test_non_numbers_are_errors_naming_function_and_row(value, problem):
    def returns_it(text, truth, eos):
        return value if truth == "1" else 0.0

    with pytest.raises(RewardError) as e:
        score_rows(returns_it, ROWS, num_workers=2, timeout_s=5.0)
    assert problem in str(e.value) and "returns_it" in str(e.value) and "batch row 1" in str(e.value)
    assert e.value.row == 1


def test_runner_rejects_bad_settings():
    with pytest.raises(ValueError, match="reward.num_workers = 0"):
        score_rows(math_reward, ROWS, num_workers=0)
    with pytest.raises(ValueError, match="reward.timeout_s = 0"):
        score_rows(math_reward, ROWS, timeout_s=0)
    assert score_rows(math_reward, [])[0].shape == (0,)


# -------------------------------------------------------------------------------------- config, rules, batch


def test_reward_config_section(reward_file, tmp_path):
    cfg = Config().override({"reward.path": str(reward_file), "reward.name": "exact", "reward.timeout_s": None})
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    with pytest.raises(ConfigError, match=r"reward.path = '.*missing.py': no such file \(.*missing.py\)"):
        Config().override({"reward.path": str(tmp_path / "missing.py")})
    with pytest.raises(ConfigError) as e:
        Config().override({"reward.num_workers": 0, "reward.timeout_s": -1.0, "reward.style": "trl",
                           "reward.name": "not a name"})
    for text in ("reward.num_workers = 0", "reward.timeout_s = -1.0", "reward.style = 'trl'",
                 "reward.name = 'not a name'"):
        assert text in str(e.value)
    assert Config().override({"reward.path": "some_pkg.rewards"}).reward.path == "some_pkg.rewards"   # a module

    import argparse

    from rlkit.config import add_config_args

    args = add_config_args(argparse.ArgumentParser()).parse_args(
        ["--set", f"reward.path={reward_file}", "--set", "reward.timeout_s=null", "--set", "reward.num_workers=2"])
    r = config_from_args(args).reward
    assert (r.path, r.timeout_s, r.num_workers) == (str(reward_file), None, 2)


def test_task_rules_default_and_reward_path(reward_file):
    from rlkit.data.arithmetic import arithmetic_reward
    from rlkit.data.stream import task_rules

    reward, cost = task_rules(Config().override({"data.source": "my_data.jsonl"}))
    assert reward is math_reward and cost is None
    # what that means for a chat reply: extraction by value, where exact match scored 0
    assert reward("9 + 10 = 19.", "19", True) == 1.0 and arithmetic_reward("9 + 10 = 19.", "19", True) == 0.0
    assert task_rules(Config())[0] is arithmetic_reward            # a built-in task keeps its own rule
    loaded, _ = task_rules(Config().override({"data.source": "my_data.jsonl", "reward.path": str(reward_file)}))
    assert loaded.name == "my_reward.py:compute_score" and loaded.style == "verl"
    assert task_rules(Config().override({"reward.path": str(reward_file)}))[1] is not None   # arithmetic's cost stays


def test_rule_scores_on_a_batch_passes_verl_fields():
    from rlkit.batch import Batch
    from rlkit.data.tokenizer import build_char_tokenizer
    from rlkit.workers.reward_model import rule_scores, rule_scores_and_extras

    tok = build_char_tokenizer()
    c, eos, pad = tok.convert_tokens_to_ids, tok.eos_token_id, tok.pad_token_id
    prompts = Batch.from_prompts(torch.tensor([[c("1")], [c("2")]]), torch.ones(2, 1, dtype=torch.long),
                                 prompt_text=["1", "2"], ground_truth=["12", "7"], data_source=["a", "b"],
                                 extra_info=[{"k": 1}, {"k": 2}])
    batch = prompts.replace(response_ids=torch.tensor([[c("1"), c("2"), eos], [c("8"), pad, pad]]),
                            response_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]))
    seen = []

    def compute_score(data_source, solution_str, ground_truth, extra_info):
        seen.append((data_source, solution_str, ground_truth, extra_info))
        return {"score": float(solution_str == ground_truth), "k": extra_info["k"]}

    scores, extras = rule_scores_and_extras(batch, compute_score, tok)
    assert scores.tolist() == [1.0, 0.0] and extras["k"].tolist() == [1.0, 2.0]
    assert sorted(seen) == [("a", "12", "12", {"k": 1}), ("b", "8", "7", {"k": 2})]
    assert rule_scores(batch, lambda t, g, e: float(e), tok).tolist() == [1.0, 0.0]   # eos_seen per row
    with pytest.raises(RewardError, match="batch row 1 \\(step 9\\)"):
        rule_scores(batch, lambda t, g, e: "0.5" if t == "8" else 1.0, tok, where="step 9")


def test_session_logs_dict_extras_and_names_the_step(tmp_path):
    """End to end on the local backend: a dict rule's extras reach the step's stats and stats.jsonl."""
    cfg = Config.preset("arithmetic-tiny", logging={"run_dir": str(tmp_path), "run_name": "run", "dashboard": False},
                        rollout={"prompts_per_step": 2, "n": 2, "max_new_tokens": 3},
                        actor={"mini_batch_size": 4, "micro_batch_size": 4}, critic={"micro_batch_size": 4},
                        cluster={"backend": "local", "threads_per_worker": 1})

    def with_extras(text, truth, eos):
        return {"score": float(eos), "chars": len(text), "always_one": 1}

    with rlkit.Session(cfg, reward_fn=with_extras) as s:
        stats = s.step()
        assert stats["reward/always_one"] == 1.0 and 0 <= stats["reward/chars"] <= 3
        line = json.loads((tmp_path / "run" / "stats.jsonl").read_text().splitlines()[-1])
        assert line["reward/always_one"] == 1.0
        s.reward_fn = lambda text, truth, eos: None
        with pytest.raises(RewardError, match=r"(?s)returned None, .*batch row 0 \(step 2\)"):
            s.step()
