"""The calculator environment: products the policy cannot work out in its head, and a `multiply` tool.

The policy may call the tool in the Hermes / Qwen format its chat template teaches,
`<tool_call>{"name": "multiply", "arguments": {"a": 37, "b": 48}}</tool_call>`; the result comes back as a
"tool" message and the policy answers in a later turn. A turn without a tool call is the answer: reward 1
when its last number is the product. A malformed call gets an error message back (counted in
env/tool_errors) and the episode goes on.

The task of the same name (`data.source = "calculator"`) makes the rows: "37*48=" with the product as ground
truth. Without an environment the same rows are plain single-turn arithmetic: what the model reaches
without the tool.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlkit.envs.base import StepResult
from rlkit.envs.builtin import WarmStart
from rlkit.envs.tools import answer_tool_calls

_NUMBER = re.compile(r"-?\d+")


def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return int(a) * int(b)


def last_number(text: str) -> int | None:
    """The last integer written in `text`, or None."""
    numbers = _NUMBER.findall(text)
    return int(numbers[-1]) if numbers else None


class Calculator:
    """One problem: `reset` poses it, `step` runs tool calls or scores the answer."""

    tools = [multiply]
    """The functions the policy may call (their JSON schemas go to the chat template's `tools=`)."""

    def reset(self, sample: dict) -> str:
        self.answer = int(sample["ground_truth"])
        info = sample.get("extra_info") or {}
        return info.get("question") or f"{info['a']}*{info['b']}="

    def step(self, action_text: str) -> StepResult:
        # tool calls are answered with their results (and counted); a turn without one is the answer
        return answer_tool_calls(action_text, self.tools) or \
            StepResult(None, reward=float(last_number(action_text) == self.answer), done=True)


def tool_call_text(a: int, b: int) -> str:
    """The call a demonstration writes: Hermes / Qwen format, compact JSON."""
    return f'<tool_call>{{"name": "multiply", "arguments": {{"a": {a}, "b": {b}}}}}</tool_call>'


def sometimes_calls(rng: random.Random, tool_rate: float = 0.5):
    """A scripted policy for warm starts (`rlkit.envs.warmup`): with probability `tool_rate` it calls the tool
    and then answers with its result; otherwise it answers at once with a guess of the product's size (wrong
    but for luck). RL then has to learn that calling pays."""
    def act(history: list) -> str:
        question = str(history[0])
        a, b = (int(x) for x in re.findall(r"\d+", question)[:2])
        if len(history) == 1:  # the first turn: call, or guess
            if rng.random() < tool_rate:
                return tool_call_text(a, b)
            low, high = 10 ** (len(str(a * b)) - 1), 10 ** len(str(a * b)) - 1
            return str(rng.randint(low, high))
        result = history[-1]  # the tool's reply: a list of tool messages
        return str(result[0]["content"]) if isinstance(result, list) else str(result)

    return act


def _calls_three_in_ten(rng: random.Random):
    return sometimes_calls(rng, tool_rate=0.3)


WARM_START = WarmStart(script=_calls_three_in_ten, steps=1000)
"""The tiny presets' starting point: a player that calls the tool 30% of the time and copies its result; RL
learns that calling pays (sampled success 26% -> 56% in 30 GRPO steps, BENCHMARKS.md)."""


@dataclass(frozen=True)
class CalculatorTask:
    """Products of two `digits`-digit numbers, with a disjoint seeded train/eval split (the arithmetic task's)."""

    digits: int = 2
    seed: int = 0

    def problems(self, n: int, split: str = "train") -> list[dict]:
        from rlkit.data.arithmetic import ArithmeticTask

        rows = ArithmeticTask(digits=self.digits, operators=("*",), seed=self.seed).problems(n, split)
        out = []
        for row in rows:
            a, b = row["prompt"].rstrip("=").split("*")
            out.append({**row, "extra_info": {"a": int(a), "b": int(b)}})
        return out


def answer_reward(response_text: str, ground_truth: str, eos_seen: bool) -> float:
    """Single-turn use of the task (no tool): 1.0 when the reply's last number is the product."""
    return float(last_number(response_text) == int(ground_truth))


def _task():
    from rlkit.data.tasks import BuiltinTask

    return BuiltinTask(
        name="calculator", description="products like '37*48=' with a multiply tool (env.name = 'calculator')",
        make=lambda kwargs: CalculatorTask(**kwargs),
        kwargs_from_data=lambda data: {"digits": data.digits, "seed": data.seed}, reward=answer_reward)


TASK = _task()

__all__ = ["WARM_START", "Calculator", "CalculatorTask", "multiply", "last_number", "answer_reward", "sometimes_calls",
           "tool_call_text", "TASK"]
