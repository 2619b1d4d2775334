"""The environment protocol: `reset(sample) -> observation`, `step(action_text) -> StepResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class StepResult:
    """What an environment answers to one policy turn."""

    observation: str | list[dict] | None = None
    """The environment's next turn: text, chat messages (dicts with "role" and "content"), or None at the end."""
    reward: float = 0.0
    """This turn's reward (added to the trajectory's)."""
    done: bool = False
    """True when the episode is over."""
    info: dict[str, Any] = field(default_factory=dict)
    """Free-form extras (logged; numeric values may become metrics)."""


@runtime_checkable
class Env(Protocol):
    """One episode of an environment: a new object (or a `reset`) per sample."""

    def reset(self, sample: dict[str, Any]) -> str | list[dict]:
        """Start an episode for one dataset row (prompt, ground_truth, extra_info ...); the first observation."""
        ...

    def step(self, action_text: str) -> StepResult:
        """The policy's decoded turn in; the environment's answer out."""
        ...


def as_step_result(result: Any) -> StepResult:
    """`result` as a StepResult (reward a float, done a bool), or a TypeError saying what is wrong with it."""
    if not isinstance(result, StepResult):
        raise TypeError(f"step() returned {type(result).__name__}, expected rlkit.envs.StepResult"
                        "(observation, reward, done, info)")
    obs = result.observation
    if obs is not None and not isinstance(obs, str) and not (
            isinstance(obs, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in obs)):
        raise TypeError(f"the observation is {type(obs).__name__}; it must be a string, a list of chat "
                        "messages ({'role': ..., 'content': ...}) or None")
    try:
        reward = float(result.reward)
    except (TypeError, ValueError):
        raise TypeError(f"the reward {result.reward!r} is not a number") from None
    return StepResult(obs, reward, bool(result.done), dict(result.info or {}))


def check_step_result(result: Any, *, env: str, sample: int, turn: int) -> StepResult:
    """`as_step_result`, its TypeError naming the environment, the sample and the turn."""
    try:
        return as_step_result(result)
    except TypeError as err:
        raise TypeError(f"environment {env}, sample {sample}, turn {turn}: {err}") from None


__all__ = ["Env", "StepResult", "as_step_result", "check_step_result"]
