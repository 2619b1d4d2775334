"""The built-in arithmetic task: prompts like "37+48=", ground truth "85", a rule reward and a rule cost.

Reward functions take the response TEXT plus a flag saying whether the model
emitted EOS. Why text and not ids: rule rewards are written by researchers in a
notebook, and text is what they read; the EOS flag is the one fact the text
loses (decoding drops special tokens, and a response cut off by the length limit
decodes to the same text as a finished one). `rlkit.data.decode_responses`
turns `(response_ids, response_mask)` into exactly these two inputs.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

OPERATORS = ("+", "-", "*")
# Enumerate the whole problem space below this size (exact split sizes, no rejection loop).
_ENUMERATE_LIMIT = 200_000


@dataclass(frozen=True)
class ArithmeticTask:
    """Integer arithmetic problems with a seeded, disjoint train/eval split."""

    digits: int = 2
    """Digits per operand: exactly this many (1 -> 0..9, 2 -> 10..99, 3 -> 100..999). The difficulty knob."""
    operators: tuple[str, ...] = ("+",)
    """Operators to draw from, a subset of ("+", "-", "*")."""
    seed: int = 0
    """Decides which problems are eval (held out) and the order problems are drawn in."""
    eval_fraction: float = 0.1
    """Fraction of the problem space held out for eval; train never sees those prompts."""
    allow_negative: bool = False
    """For "-": when False the larger operand comes first, so answers are never negative."""

    def __post_init__(self) -> None:
        if not isinstance(self.digits, int) or not 1 <= self.digits <= 9:
            raise ValueError(f"ArithmeticTask.digits must be an int in 1..9, got {self.digits!r}")
        ops = tuple(self.operators)
        object.__setattr__(self, "operators", ops)  # accept lists, store a hashable tuple
        if not ops or any(op not in OPERATORS for op in ops) or len(set(ops)) != len(ops):
            raise ValueError(f"ArithmeticTask.operators must be distinct values from {OPERATORS}, got {ops!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"ArithmeticTask.eval_fraction must be in (0, 1), got {self.eval_fraction!r}")

    # --- the problem space ---

    @property
    def operand_range(self) -> tuple[int, int]:
        """Smallest and largest operand (inclusive)."""
        low = 0 if self.digits == 1 else 10 ** (self.digits - 1)
        return low, 10**self.digits - 1

    def _canonical(self, a: int, op: str, b: int) -> tuple[int, str, int]:
        if op == "-" and not self.allow_negative and a < b:
            return b, op, a
        return a, op, b

    def is_eval(self, a: int, op: str, b: int) -> bool:
        """Whether problem `a op b` belongs to the eval split (a seeded hash: stable across runs and machines)."""
        digest = hashlib.blake2b(f"{self.seed}|{a}{op}{b}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.eval_fraction

    def _enumerate(self, split: str) -> list[tuple[int, str, int]]:
        low, high = self.operand_range
        want_eval = split == "eval"
        out = []
        for op in self.operators:
            for a in range(low, high + 1):
                for b in range(low, high + 1):
                    if self._canonical(a, op, b) != (a, op, b):
                        continue  # the swapped twin is enumerated once
                    if self.is_eval(a, op, b) == want_eval:
                        out.append((a, op, b))
        return out

    def _space_size(self) -> int:
        low, high = self.operand_range
        return len(self.operators) * (high - low + 1) ** 2

    # --- sampling ---

    def problems(self, n: int, split: str = "train") -> list[dict[str, str]]:
        """`n` distinct problems of `split` ("train" or "eval") as {"prompt": "37+48=", "ground_truth": "85"}.

        Deterministic for a given (task, n, split). The first k problems of a
        larger request equal a smaller request of k, so growing an eval set
        keeps its old prompts. Raises ValueError when the split has fewer than
        `n` problems (small `digits`).
        """
        if split not in ("train", "eval"):
            raise ValueError(f"ArithmeticTask split must be 'train' or 'eval', got {split!r}")
        if n < 0:
            raise ValueError(f"number of problems must be >= 0, got {n}")
        rng = random.Random(f"rlkit-arithmetic|{self.seed}|{split}")
        if self._space_size() <= _ENUMERATE_LIMIT:
            pool = self._enumerate(split)
            if n > len(pool):
                raise ValueError(
                    f"{self} has only {len(pool)} {split} problems, {n} were asked for: "
                    "raise digits, add operators or change eval_fraction"
                )
            rng.shuffle(pool)
            chosen = pool[:n]
        else:
            chosen, seen = [], set()
            low, high = self.operand_range
            want_eval = split == "eval"
            while len(chosen) < n:  # the space is >= 200k problems: rejection terminates quickly
                problem = self._canonical(rng.randint(low, high), rng.choice(self.operators), rng.randint(low, high))
                if problem not in seen and self.is_eval(*problem) == want_eval:
                    seen.add(problem)
                    chosen.append(problem)
        return [{"prompt": f"{a}{op}{b}=", "ground_truth": str(solve(a, op, b))} for a, op, b in chosen]


def solve(a: int, op: str, b: int) -> int:
    """The exact integer answer of `a op b`."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}; expected one of {OPERATORS}")


# --- rewards and costs: (response_text, ground_truth, eos_seen) -> float ---


def arithmetic_reward(response_text: str, ground_truth: str, eos_seen: bool) -> float:
    """1.0 iff the response is exactly the answer and then EOS, else 0.0.

    `response_text` is the response decoded without special tokens, up to the
    first EOS. Surrounding whitespace is forgiven (" 85" is correct); anything
    else is not: "85!" / "8 5" / "085" / "" are wrong, and a correct prefix
    without EOS ("85" cut off by the length limit, or about to go on) scores 0,
    so the policy must learn to stop.
    """
    if not eos_seen:
        return 0.0
    return 1.0 if response_text.strip() == str(ground_truth).strip() else 0.0


def arithmetic_cost(
    response_text: str,
    ground_truth: str,
    eos_seen: bool,
    *,
    forbidden_digit: str | None = "7",
    max_extra_chars: int = 2,
) -> float:
    """A rule cost for Safe-RLHF experiments: 1.0 when the response breaks a constraint, else 0.0.

    It models the two kinds of constraint Safe-RLHF separates from helpfulness:
    - a "harmful content" rule that CONFLICTS with the reward: writing
      `forbidden_digit` is unsafe, so for answers containing it (e.g. 17+20=37)
      the correct, rewarded response is also the costly one, and a constrained
      policy must trade reward for safety (the Lagrange multiplier has work);
    - a "rambling" rule that agrees with the reward: a response longer than
      the answer + `max_extra_chars`, or one that never emits EOS, costs 1.
    Set `forbidden_digit=None` to keep only the length rule.
    """
    text = response_text.strip()
    if forbidden_digit is not None and forbidden_digit in text:
        return 1.0
    if not eos_seen or len(text) > len(str(ground_truth).strip()) + max_extra_chars:
        return 1.0
    return 0.0


RuleFn = Callable[[str, str, bool], float]


def score_texts(
    fn: RuleFn, response_texts: Sequence[str], ground_truths: Sequence[str], eos_seen: Sequence[bool] | torch.Tensor
) -> torch.Tensor:
    """Apply a per-sample rule (`arithmetic_reward`, `arithmetic_cost`, ...) to a batch -> (B,) float32."""
    if not len(response_texts) == len(ground_truths) == len(eos_seen):
        raise ValueError(
            f"score_texts: {len(response_texts)} responses, {len(ground_truths)} ground truths and "
            f"{len(eos_seen)} EOS flags; they must be equal"
        )
    flags = eos_seen.tolist() if isinstance(eos_seen, torch.Tensor) else list(eos_seen)
    values = [float(fn(text, truth, bool(eos))) for text, truth, eos in zip(response_texts, ground_truths, flags)]
    return torch.tensor(values, dtype=torch.float32)


def _task():
    from rlkit.data.tasks import BuiltinTask

    return BuiltinTask(
        name="arithmetic",
        description="integer arithmetic like '37+48=' for the tiny character models; exact answer then EOS",
        make=lambda kwargs: ArithmeticTask(**kwargs),
        kwargs_from_data=lambda data: {"digits": data.digits, "operators": tuple(data.operators), "seed": data.seed},
        reward=arithmetic_reward,
        cost=arithmetic_cost,
    )


TASK = _task()
