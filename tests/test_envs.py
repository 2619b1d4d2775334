"""rlkit.envs (issue 18, first pieces): the environment protocol's checks, tool calls, the Python sandbox."""

from __future__ import annotations

import pytest

from rlkit.envs import Env, StepResult, ToolCall, check_step_result, parse_tool_calls, run_python, run_tool_call
from rlkit.envs import tool_schema


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Longer text the schema leaves out."""
    return a * b


def shout(text: str, times: int = 1) -> str:
    """Upper-case text."""
    if times < 0:
        raise ValueError("times must be >= 0")
    return text.upper() * times


TOOLS = {"multiply": multiply, "shout": shout}


def test_tool_schema_from_a_function():
    assert tool_schema(multiply) == {"type": "function", "function": {
        "name": "multiply", "description": "Multiply two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}}
    assert tool_schema(shout)["function"]["parameters"]["required"] == ["text"]  # `times` has a default


def test_parse_and_run_valid_calls():
    text = ('Let me compute. <tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call> and '
            '<tool_call>\n{"name": "shout", "arguments": "{\\"text\\": \\"hi\\", \\"times\\": 2}"}\n</tool_call>')
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("multiply", {"a": 12, "b": 34}, None), ("shout", {"text": "hi", "times": 2}, None)]
    assert run_tool_call(calls[0], TOOLS) == ("408", True)
    assert run_tool_call(calls[1], TOOLS) == ("HIHI", True)
    assert parse_tool_calls("no call here") == []


@pytest.mark.parametrize("text, message", [
    ('<tool_call>{"name": "multiply", "arguments": {"a": 1,}}</tool_call>', "not valid JSON"),
    ('<tool_call>["multiply"]</tool_call>', 'string "name"'),
    ('<tool_call>{"name": "multiply", "arguments": [1, 2]}</tool_call>', '"arguments" must be a JSON object'),
    ('<tool_call>{"name": "multiply", "arguments": {"a": 1}', "never closed"),
    ('<tool_call>{"name": "divide", "arguments": {}}</tool_call>', "unknown tool 'divide'; the tools are: multiply, shout"),
    ('<tool_call>{"name": "multiply", "arguments": {"a": 1, "c": 2}}</tool_call>', "bad arguments for multiply"),
    ('<tool_call>{"name": "shout", "arguments": {"text": "x", "times": -1}}</tool_call>',
     "shout raised ValueError: times must be >= 0"),
])
def test_a_malformed_call_becomes_an_error_message_not_an_exception(text, message):
    (call,) = parse_tool_calls(text)
    reply, ok = run_tool_call(call, TOOLS)
    assert not ok and reply.startswith("Error: ") and message in reply


def test_step_results_are_checked_with_environment_sample_and_turn_named():
    good = check_step_result(StepResult("higher", reward=1, done=False), env="Guess", sample=3, turn=2)
    assert good == StepResult("higher", 1.0, False, {})
    assert check_step_result(StepResult([{"role": "user", "content": "ok"}]), env="E", sample=0, turn=0).observation
    with pytest.raises(TypeError, match=r"environment Guess, sample 3, turn 2: step\(\) returned tuple"):
        check_step_result(("higher", 0.0, False, {}), env="Guess", sample=3, turn=2)
    with pytest.raises(TypeError, match=r"sample 1, turn 4: the observation is int"):
        check_step_result(StepResult(42), env="Guess", sample=1, turn=4)
    with pytest.raises(TypeError, match=r"the reward 'lots' is not a number"):
        check_step_result(StepResult("x", reward="lots"), env="Guess", sample=0, turn=0)


def test_an_environment_class_meets_the_protocol():
    class Guess:
        def reset(self, sample):
            self.target = sample["ground_truth"]
            return "Guess a number."

        def step(self, action_text):
            guess = int(action_text)
            done = guess == self.target
            return StepResult("Correct!" if done else ("higher" if guess < self.target else "lower"),
                              reward=float(done), done=done)

    env = Guess()
    assert isinstance(env, Env)
    env.reset({"ground_truth": 7})
    assert [env.step(t).observation for t in ("3", "9", "7")] == ["higher", "lower", "Correct!"]


def test_sandbox_runs_code_and_enforces_its_limits():
    assert run_python("print(sum(range(10)))").stdout == "45\n"
    failed = run_python("raise KeyError('boom')")
    assert failed.returncode == 1 and "KeyError: 'boom'" in failed.as_text()
    slow = run_python("import time\nprint('started', flush=True)\ntime.sleep(30)", timeout_s=1.0)
    assert slow.timed_out and not slow.ok and "time limit" in slow.as_text()
    hungry = run_python("x = bytearray(1 << 30)\nprint('allocated')", memory_mb=200)
    assert hungry.out_of_memory and "allocated" not in hungry.stdout and "memory limit" in hungry.as_text()
    assert run_python("import os; print(os.getcwd())").stdout.strip().split("/")[-1].startswith("rlkit-sandbox-")
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0)


def test_tool_call_dataclass_defaults():
    assert ToolCall("x") == ToolCall("x", {}, None, "")


def test_python_tool_runs_model_code_within_its_limits():
    from rlkit.envs import python_tool

    tool = python_tool(timeout_s=1.0, memory_mb=200)
    assert tool_schema(tool)["function"]["name"] == "run_python_code"
    assert tool_schema(tool)["function"]["parameters"]["properties"] == {"code": {"type": "string"}}
    calls = parse_tool_calls('<tool_call>{"name": "run_python_code", "arguments": {"code": "print(37*48)"}}'
                             '</tool_call><tool_call>{"name": "run_python_code", "arguments": '
                             '{"code": "while True: pass"}}</tool_call>')
    tools = {"run_python_code": tool}
    assert run_tool_call(calls[0], tools) == ("1776\n", True)
    text, ok = run_tool_call(calls[1], tools)  # a failed run is a failed call (counted in env/tool_errors)
    assert not ok and text == "Error: run_python_code: the code ran past its time limit and was stopped."
    call = parse_tool_calls('<tool_call>{"name": "run_python_code", "arguments": {"code": "x = 1\\n1/0"}}</tool_call>')[0]
    text, ok = run_tool_call(call, tools)
    # the traceback as the model should read it: its own script's frames, no sandbox prelude or temporary path
    assert not ok and 'File "main.py", line 2' in text and "ZeroDivisionError" in text
    assert "runpy" not in text and "<string>" not in text and "rlkit-sandbox-" not in text
    with pytest.raises(ValueError, match="timeout_s"):
        python_tool(timeout_s=0)


def test_answer_tool_calls_runs_counts_and_passes_on_a_turn_without_calls():
    from rlkit.envs import answer_tool_calls

    assert answer_tool_calls("the answer is 12", [multiply]) is None
    result = answer_tool_calls('<tool_call>{"name": "multiply", "arguments": {"a": 3, "b": 4}}</tool_call>'
                               '<tool_call>{"name": "multiply", "arguments": {"a": 3}}</tool_call><tool_call>oops',
                               [multiply])
    assert result.observation[0] == {"role": "tool", "content": "12"}
    assert result.observation[1]["content"].startswith("Error: bad arguments for multiply")
    assert result.observation[2]["content"].startswith("Error: a <tool_call> tag is never closed")
    assert result.info == {"tool_calls": 3, "tool_errors": 2} and not result.done and result.reward == 0.0
