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

import re
from dataclasses import dataclass

from rlkit.envs.base import StepResult
from rlkit.envs.tools import parse_tool_calls, run_tool_call

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
        calls = parse_tool_calls(action_text)
        if calls:
            replies = [run_tool_call(call, {fn.__name__: fn for fn in self.tools}) for call in calls]
            return StepResult([{"role": "tool", "content": text} for text, _ in replies],
                              info={"tool_calls": len(calls), "tool_errors": sum(not ok for _, ok in replies)})
        return StepResult(None, reward=float(last_number(action_text) == self.answer), done=True)


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

__all__ = ["Calculator", "CalculatorTask", "multiply", "last_number", "answer_reward", "TASK"]
