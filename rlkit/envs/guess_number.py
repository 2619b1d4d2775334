"""Guess the number: the policy names a number, the environment says "higher" or "lower", until it is found.

A game that only feedback can win: a policy that ignores the answers finds the number from 1 to 7 in three
guesses 3/7 of the time at best (without repeats; 37% guessing uniformly), and one that bisects always finds
it (1 + 2 + 4 = 7 numbers reachable in three guesses). So success rising past the blind rate is learning to
read the environment's turns. The range is 1 to 2^(data.digits + 2) - 1: bisection needs digits + 2 guesses.

The task of the same name (`data.source = "guess_number"`) makes the rows: the prompt "Guess 1-7", the secret
number as ground truth and the range in extra_info. Its single-turn reward (no environment) scores one guess.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlkit.envs.base import StepResult

_NUMBER = re.compile(r"-?\d+")


def first_number(text: str) -> int | None:
    """The first integer written in `text`, or None."""
    match = _NUMBER.search(text)
    return int(match.group()) if match else None


class GuessNumber:
    """One game: `reset` reads the secret from the row, `step` answers each guess (reward 1 when found)."""

    def reset(self, sample: dict) -> str:
        self.target = int(sample["ground_truth"])
        self.high = int((sample.get("extra_info") or {}).get("high", 7))
        return f"Guess 1-{self.high}"

    def step(self, action_text: str) -> StepResult:
        guess = first_number(action_text)
        if guess is None or not 1 <= guess <= self.high:
            return StepResult(f"1-{self.high}", info={"invalid": 1})
        if guess == self.target:
            return StepResult(None, reward=1.0, done=True)
        return StepResult("higher" if guess < self.target else "lower")


@dataclass(frozen=True)
class GuessNumberTask:
    """Secret numbers drawn uniformly from 1 to `high`, seeded per split (the splits share the numbers: there
    are only `high` of them; what differs is the order)."""

    digits: int = 1
    seed: int = 0

    @property
    def high(self) -> int:
        return 2 ** (self.digits + 2) - 1

    def problems(self, n: int, split: str = "train") -> list[dict]:
        rng = random.Random(f"rlkit-guess-number|{self.seed}|{split}")
        return [{"prompt": f"Guess 1-{self.high}", "ground_truth": str(rng.randint(1, self.high)),
                 "extra_info": {"high": self.high}} for _ in range(n)]


def one_guess_reward(response_text: str, ground_truth: str, eos_seen: bool) -> float:
    """Single-turn use of the task (no environment): 1.0 when the one guess is the number."""
    return 1.0 if first_number(response_text) == int(ground_truth) else 0.0


def _task():
    from rlkit.data.tasks import BuiltinTask

    return BuiltinTask(
        name="guess_number", description="guess a number from 1 to 2^(digits+2)-1 with higher/lower feedback "
        "(env.name = 'guess_number')", make=lambda kwargs: GuessNumberTask(**kwargs),
        kwargs_from_data=lambda data: {"digits": data.digits, "seed": data.seed}, reward=one_guess_reward)


TASK = _task()

__all__ = ["GuessNumber", "GuessNumberTask", "first_number", "one_guess_reward", "TASK"]
