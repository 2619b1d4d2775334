"""The built-in chat task (`data.source = "chat_sums"`) and the task registry (rlkit.data.tasks)."""

from __future__ import annotations

import pytest

import rlkit
from rlkit.data.chat_sums import ChatSumsTask, chat_sums_reward
from rlkit.data.tasks import builtin_tasks, get_task


def test_the_split_is_by_unordered_pair_and_covers_every_sum_once():
    task = ChatSumsTask()
    train, held = set(task.pool("train")), set(task.pool("eval"))
    assert len(train) + len(held) == 30 * 30 and not train & held
    assert all((b, a) in held for a, b in held)  # "3 + 5" held out means "5 + 3" too
    assert 60 <= len(held) <= 120  # about 10% of the 900 ordered pairs


def test_problems_are_seeded_distinct_and_prefix_stable():
    task = ChatSumsTask(seed=3)
    rows = task.problems(20)
    assert rows[:5] == task.problems(5) and len({r["prompt"] for r in rows}) == 20
    first = rows[0]
    a, b = (int(x) for x in first["prompt"].removeprefix("What is ").split("?")[0].split(" + "))
    assert first["ground_truth"] == str(a + b)
    assert first["prompt"] == f"What is {a} + {b}? Reply with just the number."
    assert ChatSumsTask(seed=4).problems(20) != rows


def test_asking_for_more_prompts_than_the_split_has_names_the_config_field():
    with pytest.raises(ValueError, match=r"has only \d+ eval prompts, 500 were asked for: lower data.eval_size"):
        ChatSumsTask().problems(500, "eval")


def test_the_reply_is_scored_by_its_extracted_answer_not_by_exact_match():
    assert chat_sums_reward("17 + 25 = 42", "42", False) == 1.0  # restating the question is fine
    assert chat_sums_reward("42", "42", True) == 1.0
    assert chat_sums_reward("The sum is 41.", "42", True) == 0.0
    assert chat_sums_reward("I cannot add.", "42", True) == 0.0


def test_the_registry_lists_both_tasks_with_their_rules():
    tasks = builtin_tasks()
    assert {"arithmetic", "chat_sums"} <= set(tasks)
    assert get_task("chat_sums").reward is chat_sums_reward and get_task("chat_sums").cost is None
    assert get_task("arithmetic").cost is not None  # Safe-RLHF's rule cost
    assert get_task("no-such-task") is None and get_task(None) is None


def test_the_preset_loads_the_task_rows_it_declares():
    from rlkit.data.datasets import load_prompt_split

    cfg = rlkit.Config.preset("chat-sums-smollm2")
    assert cfg.data.source == "chat_sums" and cfg.data.use_chat_template is True
    train, held = load_prompt_split(cfg.data, "train"), load_prompt_split(cfg.data, "eval")
    assert len(train) == 768 and len(held) == 64
    pairs = lambda table: {tuple(sorted(p.removeprefix("What is ").split("?")[0].split(" + "))) for p in table["prompt"]}
    assert not pairs(train) & pairs(held)
