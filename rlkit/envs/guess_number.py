"""Guess the number: the policy names a number, the environment says "higher" or "lower", until it is found.

A game that only feedback can win. The answer to a wrong guess names the direction and the numbers still
possible ("higher 5-7"): a policy that ignores it finds a number from 1 to 7 within three guesses 37% of the
time (guessing uniformly), one that guesses inside the range it is told 68%, and one that bisects always (1 +
2 + 4 = 7 numbers reachable in three guesses). So success rising past the blind rate is learning to read the
environment's turns. The range is 1 to 2^(data.digits + 2) - 1: bisection needs digits + 2 guesses.

The task of the same name (`data.source = "guess_number"`) makes the rows: the prompt "Guess 1-7", the secret
number as ground truth and the range in extra_info. Its single-turn reward (no environment) scores one guess.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlkit.envs.base import StepResult
from rlkit.envs.builtin import WarmStart

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
        self.low_left, self.high_left = 1, self.high  # the numbers still possible
        return f"Guess 1-{self.high}"

    def step(self, action_text: str) -> StepResult:
        guess = first_number(action_text)
        if guess is None or not 1 <= guess <= self.high:
            return StepResult(f"{self.low_left}-{self.high_left}", info={"invalid": 1})
        if guess == self.target:
            return StepResult(None, reward=1.0, done=True)
        if guess < self.target:
            self.low_left = max(self.low_left, guess + 1)
            return StepResult(f"higher {self.low_left}-{self.high_left}")
        self.high_left = min(self.high_left, guess - 1)
        return StepResult(f"lower {self.low_left}-{self.high_left}")


def scripted_guesser(rng: random.Random, informed: float = 0.0):
    """A scripted policy for warm starts (`rlkit.envs.warmup`): at each turn, with probability `informed` a
    number inside the range the last answer gave, else a uniformly random one in 1..high whatever the answer
    said. `informed = 0` teaches the format and none of the strategy; a little more gives RL a policy that
    reads the answers sometimes, which it can learn to do always."""
    def act(history: list) -> str:
        low, high = 1, int(re.search(r"1-(\d+)", str(history[0])).group(1))
        told = re.search(r"(\d+)-(\d+)", str(history[-1])) if len(history) > 1 else None
        if told and rng.random() < informed and int(told.group(1)) <= int(told.group(2)):
            low, high = int(told.group(1)), int(told.group(2))
        return str(rng.randint(low, high))

    return act


def blind_guesser(rng: random.Random):
    """`scripted_guesser` that never reads the answers."""
    return scripted_guesser(rng, informed=0.0)


def _half_informed(rng: random.Random):
    return scripted_guesser(rng, informed=0.5)


WARM_START = WarmStart(script=_half_informed, steps=1000)
"""The tiny presets' starting point: a player that reads the answer half the time (52% of games won sampling,
55% greedy). RL learns to read it always: greedy success 55% -> 88% in 60 GRPO steps (BENCHMARKS.md)."""


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

__all__ = ["WARM_START", "GuessNumber", "GuessNumberTask", "blind_guesser", "scripted_guesser", "first_number", "one_guess_reward", "TASK"]
