"""The built-in chat task for real instruct models: sums asked in natural language, answered in a reply.

    user:      What is 17 + 25? Reply with just the number.
    assistant: 17 + 25 = 42          <- scored by the last number of the reply (rlkit.rewards.math_reward)

Why this task: a pretrained 135M instruct model (SmolLM2-135M-Instruct) answers such sums right about a
quarter of the time when scored by the LAST number of its reply (it often restates the question first),
so the reward is dense enough for GRPO to move it in tens of steps on a CPU (BENCHMARKS.md). Scored by
the FIRST number instead, it starts near 2% and does not learn in that budget.

The prompts are plain questions: the `chat-sums-smollm2` preset sets `data.use_chat_template = true`, which
asks them as a user turn of the model's chat template.

The train/eval split is by the unordered pair {a, b}: "3 + 5" and "5 + 3" are on the same side, so held-out
accuracy is never helped by the commuted twin of a training prompt.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

PROMPT_TEMPLATE = "What is {a} + {b}? Reply with just the number."


@dataclass(frozen=True)
class ChatSumsTask:
    """Sums a + b with a, b in [low, high], asked as a chat question; a seeded split held out by pair."""

    low: int = 1
    """Smallest operand (inclusive)."""
    high: int = 30
    """Largest operand (inclusive). 1..30 gives 900 prompts: about 810 train and 90 eval."""
    seed: int = 0
    """Decides which pairs are held out and the order prompts are drawn in."""
    eval_fraction: float = 0.1
    """Fraction of the unordered pairs held out for evaluation."""
    template: str = PROMPT_TEMPLATE
    """The question, with `{a}` and `{b}` placeholders."""

    def __post_init__(self) -> None:
        if not (isinstance(self.low, int) and isinstance(self.high, int) and 0 <= self.low <= self.high):
            raise ValueError(f"ChatSumsTask: need integers 0 <= low <= high, got low={self.low!r} high={self.high!r}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"ChatSumsTask.eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        if "{a}" not in self.template or "{b}" not in self.template:
            raise ValueError(f"ChatSumsTask.template must contain {{a}} and {{b}}, got {self.template!r}")

    def is_eval(self, a: int, b: int) -> bool:
        """Whether the pair {a, b} is held out (a seeded hash of the unordered pair: stable everywhere)."""
        lo, hi = min(a, b), max(a, b)
        digest = hashlib.blake2b(f"chat-sums|{self.seed}|{lo}+{hi}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.eval_fraction

    def pool(self, split: str) -> list[tuple[int, int]]:
        """Every ordered (a, b) of `split`, in a fixed order."""
        if split not in ("train", "eval"):
            raise ValueError(f"ChatSumsTask split must be 'train' or 'eval', got {split!r}")
        want_eval = split == "eval"
        span = range(self.low, self.high + 1)
        return [(a, b) for a in span for b in span if self.is_eval(a, b) == want_eval]

    def problems(self, n: int, split: str = "train") -> list[dict[str, str]]:
        """`n` distinct prompts of `split` as {"prompt": "What is 3 + 5? ...", "ground_truth": "8"}.

        Deterministic; the first k of a larger request equal a request of k. Raises ValueError when
        the split has fewer than `n` prompts (widen `high`, or lower `data.train_size` / `data.eval_size`).
        """
        if n < 0:
            raise ValueError(f"number of problems must be >= 0, got {n}")
        pairs = self.pool(split)
        if n > len(pairs):
            raise ValueError(f"{self} has only {len(pairs)} {split} prompts, {n} were asked for: lower "
                             f"data.{'train' if split == 'train' else 'eval'}_size or widen the operand range")
        random.Random(f"rlkit-chat-sums|{self.seed}|{split}").shuffle(pairs)
        return [{"prompt": self.template.format(a=a, b=b), "ground_truth": str(a + b)} for a, b in pairs[:n]]


def chat_sums_reward(response_text: str, ground_truth: Any, eos_seen: bool) -> float:
    """1.0 when the reply's answer (rlkit.rewards.extract_answer: a boxed / "the answer is" / last number)
    equals the sum, else 0.0. EOS is not required: a reply cut at the length limit after the answer counts."""
    from rlkit.rewards import math_reward

    return math_reward(response_text, ground_truth, eos_seen)


def _task() -> Any:
    from rlkit.data.tasks import BuiltinTask

    return BuiltinTask(
        name="chat_sums",
        description="sums of two numbers in 1..30 asked in words to an instruct model; the reply's answer "
                    "(boxed, 'the answer is', else its last number) is scored",
        make=lambda kwargs: ChatSumsTask(**kwargs),
        kwargs_from_data=lambda data: {"seed": data.seed},
        reward=chat_sums_reward,
        default_rows={"train": 768, "eval": 64},
    )


TASK = _task()
