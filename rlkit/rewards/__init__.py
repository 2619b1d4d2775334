"""Reward rules and the machinery that runs them.

    from rlkit.rewards import math_reward, think_format_reward, combine, length_penalty
    rule = length_penalty(combine((math_reward, 1.0), (think_format_reward, 0.1)), max_chars=800, coef=1e-3)

- `math_answer`: `extract_answer` (boxed, `####`, "the answer is", last number), `math_equal` (by value),
  `math_reward` (the default rule for data sources that are not built-in tasks).
- `format`: `format_reward(regex)`, `think_format_reward`, `boxed_format_reward`.
- `shaping`: `length_penalty(rule, max_chars, coef)`, `combine((rule, weight), ...)`.
- `loader`: `load_reward_fn(path, name, style)` for `reward.path` / `reward.name` / `reward.style`, and
  `as_reward_function`: rlkit's `(response_text, ground_truth, eos_seen)` or verl's
  `compute_score(data_source, solution_str, ground_truth, extra_info)`, sync or async.
- `runner`: `score_rows` (thread pool, per-sample timeout, dict results -> extras logged as `reward/<key>`);
  `results`: what a reward may return, and `RewardError`, which names the function, row and prompt.

Nothing here imports torch until a batch is scored, nor anything distributed.
"""

from __future__ import annotations

from rlkit.rewards.format import boxed_format_reward, format_reward, think_format_reward
from rlkit.rewards.loader import RewardFunction, as_reward_function, load_reward_fn
from rlkit.rewards.math_answer import extract_answer, math_equal, math_reward
from rlkit.rewards.results import RewardError, RewardRow, RewardTimeoutError
from rlkit.rewards.runner import extras_stats, score_rows
from rlkit.rewards.shaping import combine, length_penalty

__all__ = [
    "extract_answer", "math_equal", "math_reward", "format_reward", "think_format_reward", "boxed_format_reward",
    "length_penalty", "combine", "load_reward_fn", "as_reward_function", "RewardFunction", "score_rows",
    "extras_stats", "RewardRow", "RewardError", "RewardTimeoutError",
]
