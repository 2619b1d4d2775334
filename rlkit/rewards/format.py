"""Format rewards: 1.0 when the reply has the shape the prompt asked for, else 0.0.

    rule = format_reward(r"<think>.*?</think>\\s*\\S.*")   # a reasoning block, then an answer
    rule("<think>3 + 4</think> 7", None, True)            -> 1.0

They score the form only, never the answer: add them to an answer rule with a small weight
(`rlkit.rewards.combine((math_reward, 1.0), (think_format_reward, 0.1))`).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from rlkit.rewards.math_answer import last_boxed

RuleFn = Callable[[str, Any, bool], float]

# One <think>...</think> block at the start (DeepSeek-R1's template), then a non-empty answer.
THINK_PATTERN = r"<think>(?:(?!</think>).)*</think>\s*\S.*"


def format_reward(pattern: str | re.Pattern, *, mode: str = "fullmatch", flags: int = re.DOTALL,
                  require_eos: bool = False, name: str | None = None) -> RuleFn:
    """A rule `(response_text, ground_truth, eos_seen) -> 1.0 | 0.0` that checks the reply against a regex.

    pattern: a regex (str or compiled; a compiled one keeps its own flags).
    mode: "fullmatch" (the whole reply, surrounding whitespace ignored) or "search" (anywhere in it).
    flags: for a str pattern; DOTALL by default so that `.` crosses lines.
    require_eos: 0.0 for a reply cut off by the length limit.
    name: the rule's `__name__` in logs and errors (default "format_reward").
    """
    if mode not in ("fullmatch", "search"):
        raise ValueError(f"format_reward(mode={mode!r}): allowed 'fullmatch', 'search'")
    regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, flags)
    match = regex.fullmatch if mode == "fullmatch" else regex.search

    def rule(response_text: str, ground_truth: Any, eos_seen: bool) -> float:
        if require_eos and not eos_seen:
            return 0.0
        text = response_text.strip() if mode == "fullmatch" else response_text
        return 1.0 if match(text) else 0.0

    rule.__name__ = rule.__qualname__ = name or "format_reward"
    rule.__doc__ = f"1.0 when the reply {'is' if mode == 'fullmatch' else 'contains'} {regex.pattern!r}, else 0.0."
    return rule


think_format_reward = format_reward(THINK_PATTERN, name="think_format_reward")
"""1.0 for `<think>...</think>` (one block, at the start) followed by a non-empty answer."""


def boxed_format_reward(response_text: str, ground_truth: Any, eos_seen: bool) -> float:
    """1.0 when the reply puts a non-empty answer in `\\boxed{...}` (balanced braces), whatever it is."""
    boxed = last_boxed(response_text)
    return 1.0 if boxed else 0.0


__all__ = ["format_reward", "think_format_reward", "boxed_format_reward", "THINK_PATTERN"]
