"""What a reward function may return, and the errors that name the function and the row when it misbehaves.

A reward is a number (float, int, bool, a numpy scalar; finite) or a dict holding one under "score" (verl's
key) or "reward", whose other numeric entries are extras, logged as `reward/<key>` (their mean over the
batch). Anything else is an error: a str such as "0.5" is not silently converted, because a rule that
returns text has a bug somewhere (it read the wrong field, or forgot a float()).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

SCORE_KEYS = ("score", "reward")
"""Keys of a dict return that hold the score, in order of preference."""
RESERVED_EXTRAS = ("mean",)
"""Extra keys a rule may not use: `reward/mean` is the batch mean of the score, logged by rlkit itself."""


@dataclass(frozen=True)
class RewardRow:
    """One response to score, with everything either convention (rlkit's rule, verl's compute_score) reads."""

    response_text: str
    """The response decoded up to (not including) its first EOS, without special tokens."""
    ground_truth: Any
    """The row's reference answer (`batch.ground_truth`)."""
    eos_seen: bool
    """Whether the response ended with EOS (False: cut off by the length limit)."""
    data_source: str = ""
    """The dataset the row came from (`batch.data_source`; verl's `data_source`)."""
    extra_info: dict = field(default_factory=dict)
    """The row's free-form metadata (`batch.extra_info`; verl's `extra_info`)."""
    prompt_text: str = ""
    """The prompt as the model saw it (after the chat template); only for error messages."""


class RewardError(RuntimeError):
    """A reward function raised, returned something that is not a reward, or ran past `reward.timeout_s`.

    The message names the function (module:qualname), the batch row and the start of its prompt and
    response; the function's own exception, if any, is chained (`__cause__`)."""

    def __init__(self, message: str, *, function: str, row: int):
        super().__init__(message)
        self.function = function
        """module:qualname of the reward function."""
        self.row = row
        """Index of the offending row in the scored batch."""


class RewardTimeoutError(RewardError, TimeoutError):
    """A reward function call ran longer than `reward.timeout_s` seconds."""


class RewardValueError(ValueError):
    """A value that is not a reward; the message says what it is (without the row: the caller adds it)."""


def _snippet(text: Any, limit: int = 80, *, tail: bool = False) -> str:
    """repr of `text` cut to about `limit` characters; `tail` keeps its start and its end (a chat-templated
    prompt starts with the same system boilerplate in every row: its end is the question)."""
    text = "" if text is None else str(text)
    if len(text) <= limit:
        return repr(text)
    if tail:  # a third for the start, the rest for the end
        head = limit // 3
        return f"{text[:head]!r} ... {text[head - limit:]!r}"
    return f"{text[:limit]!r}..."


def describe_row(row: RewardRow, index: int, where: str = "") -> str:
    """`batch row 3 (step 2)` and the start of its prompt and response, for error messages."""
    place = f"batch row {index}" + (f" ({where})" if where else "")
    prompt = _snippet(row.prompt_text, 120, tail=True)
    return f"{place}\n  prompt:   {prompt}\n  response: {_snippet(row.response_text)}"


def _as_number(value: Any) -> float | None:
    """float(value) for a real number (bool, int, float, numpy scalars, 0-d arrays and tensors), else None."""
    if isinstance(value, numbers.Real):
        return float(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item") and not isinstance(value, (str, bytes)):
        item = value.item()
        return float(item) if isinstance(item, numbers.Real) else None
    return None


def _score(value: Any, what: str) -> float:
    number = _as_number(value)
    if number is None:
        raise RewardValueError(f"{what} is a {type(value).__name__}: a reward must be a number (float, int or "
                               f"bool) or a dict with a numeric 'score'")
    if not math.isfinite(number):
        raise RewardValueError(f"{what} is {number}: a reward must be finite")
    return number


def split_result(value: Any) -> tuple[float, dict[str, float]]:
    """(score, extras) of what a reward function returned; RewardValueError when it is not a reward.

    Extras are the dict's other entries that are numbers (bools count as 0/1); non-numeric entries (a
    parsed answer string, say) and non-finite numbers are left out."""
    if not isinstance(value, Mapping):
        return _score(value, "it"), {}
    key = next((k for k in SCORE_KEYS if k in value), None)
    if key is None:
        raise RewardValueError(f"it is a dict without a 'score' (or 'reward') key; its keys: "
                               f"{', '.join(map(repr, value)) or 'none'}")
    score = _score(value[key], f"its {key!r}")
    extras = {}
    for k, v in value.items():
        if k == key:
            continue
        if k in RESERVED_EXTRAS:
            raise RewardValueError(f"it has the key {k!r}, which is reserved (reward/{k} is logged by rlkit "
                                   f"itself): rename it")
        number = _as_number(v)
        if number is not None and math.isfinite(number):
            extras[str(k)] = number
    return score, extras


__all__ = ["RewardRow", "RewardError", "RewardTimeoutError", "RewardValueError", "split_result", "describe_row",
           "SCORE_KEYS", "RESERVED_EXTRAS"]
