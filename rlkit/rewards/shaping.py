"""Rules made from rules: a length penalty on top of a rule, a weighted sum of rules.

    rule = length_penalty(math_reward, max_chars=400, coef=0.002)      # -0.2 for 100 characters too many
    rule = combine((math_reward, 1.0), (think_format_reward, 0.1))     # logs reward/math_reward, ...

Both take and give rules in rlkit's convention `(response_text, ground_truth, eos_seen)` and are pure:
the result depends only on the arguments (no state, no clock), so they are safe on the thread pool.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Mapping

from rlkit.rewards.results import SCORE_KEYS, split_result

RuleFn = Callable[[str, Any, bool], Any]


def _name(rule: Any) -> str:
    return getattr(rule, "__name__", None) or type(rule).__name__


def overlong_penalty(text: str, max_chars: int, coef: float, max_penalty: float | None = None) -> float:
    """`coef` per character of `text` beyond `max_chars` (0 within it), at most `max_penalty`."""
    penalty = coef * max(0, len(text) - max_chars)
    return penalty if max_penalty is None else min(penalty, max_penalty)


def _subtract(value: Any, penalty: float) -> Any:
    """A rule's result less `penalty`: a number stays a number; a dict keeps its extras and gains
    `length_penalty`."""
    score, _ = split_result(value)  # RewardValueError for a result that is not a reward
    if isinstance(value, Mapping):
        key = next(k for k in SCORE_KEYS if k in value)
        return {**value, key: score - penalty, "length_penalty": penalty}
    return score - penalty


def length_penalty(rule: RuleFn, max_chars: int, coef: float = 0.001, *,
                   max_penalty: float | None = None) -> RuleFn:
    """`rule` less `coef` per character of the reply beyond `max_chars` (capped at `max_penalty`).

    Characters, not tokens: the rule sees text, and the count does not depend on the tokenizer. For a
    penalty in tokens near `rollout.max_new_tokens` see DAPO's `algo.overlong_buffer`. An async `rule`
    gives an async rule."""
    if not (isinstance(max_chars, int) and max_chars >= 0):
        raise ValueError(f"length_penalty: max_chars must be an int >= 0, got {max_chars!r}")
    if coef < 0 or (max_penalty is not None and max_penalty < 0):
        raise ValueError(f"length_penalty: coef and max_penalty must be >= 0, got {coef!r}, {max_penalty!r}")

    if inspect.iscoroutinefunction(rule):
        async def penalised(response_text: str, ground_truth: Any, eos_seen: bool) -> Any:
            value = await rule(response_text, ground_truth, eos_seen)
            return _subtract(value, overlong_penalty(response_text, max_chars, coef, max_penalty))
    else:
        def penalised(response_text: str, ground_truth: Any, eos_seen: bool) -> Any:
            value = rule(response_text, ground_truth, eos_seen)
            return _subtract(value, overlong_penalty(response_text, max_chars, coef, max_penalty))

    penalised.__name__ = penalised.__qualname__ = f"length_penalty({_name(rule)})"
    return penalised


def combine(*weighted: tuple[RuleFn, float]) -> RuleFn:
    """A rule returning {"score": sum of weight * rule, <rule name>: each rule's own score}: the parts are
    logged as `reward/<rule name>` (names repeated get _2, _3 ...). A part returning a dict counts with
    its score. Parts are sync rules in rlkit's convention."""
    if not weighted:
        raise ValueError("combine needs at least one (rule, weight) pair")
    names: list[str] = []
    for item in weighted:
        if not (isinstance(item, tuple) and len(item) == 2 and callable(item[0])
                and isinstance(item[1], (int, float)) and not isinstance(item[1], bool)):
            raise TypeError(f"combine takes (rule, weight) pairs, got {item!r:.80}")
        if inspect.iscoroutinefunction(item[0]):
            raise TypeError(f"combine: {_name(item[0])} is async; combine takes sync rules")
        base = re.sub(r"\W+", "_", _name(item[0])).strip("_") or "rule"
        if base in SCORE_KEYS or base == "mean":
            base = f"{base}_part"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)

    def combined(response_text: str, ground_truth: Any, eos_seen: bool) -> dict[str, float]:
        parts = {name: split_result(rule(response_text, ground_truth, eos_seen))[0]
                 for name, (rule, _) in zip(names, weighted)}
        return {"score": sum(w * parts[name] for name, (_, w) in zip(names, weighted)), **parts}

    combined.__name__ = combined.__qualname__ = "combine(" + ", ".join(names) + ")"
    return combined


__all__ = ["length_penalty", "overlong_penalty", "combine"]
