r"""Environments for multi-turn and tool-using rollouts.

An environment implements `reset(sample) -> observation` and `step(action_text) -> StepResult`; give it to
the Session (`rlkit.Session(cfg, env=MyEnv)`, or a built-in with `env.name`) and `s.generate()` runs episodes
instead of single responses: token in, token out (`rlkit.envs.rollout`), the environment's tokens in the
sequence but not in the loss (`Batch.loss_mask`). Tools are Python functions (their JSON schemas go to the
chat template's `tools=`); calls in the Hermes / Qwen `<tool_call>` format are parsed and run, a malformed
one becomes an error message for the model; `python_tool` runs model-written code in a sandboxed subprocess.

```python
class Guess:                                  # any class with these two methods is an rlkit.envs.Env
    def reset(self, sample):                  # -> the first observation (text or chat messages)
        self.target = int(sample["ground_truth"])
        return "Guess a number from 1 to 100."
    def step(self, action_text):              # -> StepResult(observation, reward, done, info)
        digits = re.findall(r"\d+", action_text)
        if not digits:
            return StepResult("Say a number.", info={"invalid": 1})
        if int(digits[0]) == self.target:
            return StepResult(None, reward=1.0, done=True)
        return StepResult("higher" if int(digits[0]) < self.target else "lower")

s = rlkit.Session(cfg, env=Guess)             # s.generate() now plays episodes
```
"""

from __future__ import annotations

from rlkit.envs.base import Env, StepResult, check_step_result
from rlkit.envs.builtin import BUILTIN_ENVS, builtin_env
from rlkit.envs.rollout import EnvError, EnvRollout
from rlkit.envs.sandbox import SandboxResult, python_tool, run_python
from rlkit.envs.tools import (ToolCall, ToolCallError, answer_tool_calls, parse_tool_calls, run_tool_call,
                              tool_schema)

__all__ = ["Env", "StepResult", "check_step_result", "EnvRollout", "EnvError", "BUILTIN_ENVS", "builtin_env",
           "ToolCall", "ToolCallError", "answer_tool_calls", "parse_tool_calls", "run_tool_call", "tool_schema", "SandboxResult",
           "run_python", "python_tool"]
