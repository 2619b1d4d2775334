"""Environments for multi-turn and tool-using rollouts (issue 18; the rollout loop is not built yet).

What exists so far: the protocol an environment implements, tool calls parsed from a model's text, tool
schemas from Python functions, and a sandbox that runs model-written Python in a subprocess with time and
memory limits.

```python
class Guess(rlkit.envs.Env):
    def reset(self, sample):                  # -> the first observation (text or chat messages)
        self.target = int(sample["ground_truth"])
        return "Guess a number from 1 to 100."
    def step(self, action_text):              # -> StepResult(observation, reward, done, info)
        guess = int(action_text.strip() or 0)
        if guess == self.target:
            return StepResult("Correct!", reward=1.0, done=True)
        return StepResult("higher" if guess < self.target else "lower")
```
"""

from __future__ import annotations

from rlkit.envs.base import Env, StepResult, check_step_result
from rlkit.envs.sandbox import SandboxResult, run_python
from rlkit.envs.tools import ToolCall, ToolCallError, parse_tool_calls, run_tool_call, tool_schema

__all__ = ["Env", "StepResult", "check_step_result", "ToolCall", "ToolCallError", "parse_tool_calls",
           "run_tool_call", "tool_schema", "SandboxResult", "run_python"]
