"""Tool calls: JSON schemas from Python functions, calls parsed from a model's text, calls run safely.

The format parsed is the Hermes / Qwen one that those models' chat templates ask for:
`<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>`. A malformed call never
raises out of `run_tool_call`: it becomes an error message for the model (and is counted by the caller).
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array", dict: "object"}


@dataclass
class ToolCall:
    """One parsed call: `name` and `arguments`, or `error` (why the text is not a valid call)."""

    name: str | None
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    text: str = ""
    """The raw text between the tags."""


class ToolCallError(ValueError):
    """A tool call that cannot run: unknown tool, bad arguments (the message is what the model is told)."""


def tool_schema(fn: Callable) -> dict[str, Any]:
    """The chat template's `tools=` entry of `fn`: name, the docstring's first paragraph, and its parameters
    as a JSON schema from the annotations (int, float, str, bool, list, dict; others are left untyped)."""
    doc = inspect.getdoc(fn) or ""
    properties, required = {}, []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        annotation = param.annotation
        if isinstance(annotation, str):  # from __future__ import annotations
            annotation = {t.__name__: t for t in _JSON_TYPES}.get(annotation, annotation)
        properties[name] = {"type": _JSON_TYPES[annotation]} if annotation in _JSON_TYPES else {}
        if param.default is param.empty:
            required.append(name)
    return {"type": "function", "function": {
        "name": fn.__name__, "description": doc.split("\n\n")[0].strip(),
        "parameters": {"type": "object", "properties": properties, "required": required}}}


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every `<tool_call>...</tool_call>` in `text`, in order; one whose content is not a JSON object with a
    string "name" (and an object "arguments", default {}) comes back with `error` set. An opening tag never
    closed counts as a malformed call."""
    calls = []
    for match in _CALL.finditer(text):
        raw = match.group(1).strip()
        try:
            payload = json.loads(raw)
        except json.JSONDecodeError as err:
            calls.append(ToolCall(None, error=f"the tool call is not valid JSON ({err.msg} at position {err.pos})",
                                  text=raw))
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            calls.append(ToolCall(None, error='the tool call must be a JSON object with a string "name"', text=raw))
            continue
        arguments = payload.get("arguments", {})
        if isinstance(arguments, str):  # some models send the arguments JSON-encoded once more
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(arguments, dict):
            calls.append(ToolCall(payload["name"], error='"arguments" must be a JSON object', text=raw))
            continue
        calls.append(ToolCall(payload["name"], arguments, text=raw))
    unclosed = text.count("<tool_call>") - len(calls)
    calls.extend(ToolCall(None, error="a <tool_call> tag is never closed with </tool_call>") for _ in range(unclosed))
    return calls


def run_tool_call(call: ToolCall, tools: dict[str, Callable]) -> tuple[str, bool]:
    """(the text to show the model, ok): the tool's result as text, or an error message when the call is
    malformed, names no known tool, has arguments the function does not take, or the tool raises."""
    if call.error is not None:
        return f"Error: {call.error}.", False
    if call.name not in tools:
        return f"Error: unknown tool {call.name!r}; the tools are: {', '.join(sorted(tools))}.", False
    fn = tools[call.name]
    try:
        inspect.signature(fn).bind(**call.arguments)
    except TypeError as err:
        return f"Error: bad arguments for {call.name}: {err}.", False
    try:
        result = fn(**call.arguments)
    except ToolCallError as err:  # the tool's own refusal: its message is what the model reads
        return f"Error: {call.name}: {err}.", False
    except Exception as err:  # the model is told, the run goes on
        return f"Error: {call.name} raised {type(err).__name__}: {err}.", False
    return result if isinstance(result, str) else json.dumps(result), True


def answer_tool_calls(action_text: str, tools: list[Callable]):
    """The environment's answer to a policy turn that calls tools, or None when it calls none: every call run
    (`run_tool_call`), each result a "tool" message, and the counts in `info` (`tool_calls`, `tool_errors`:
    the rollout logs their means per episode as env/tool_calls, env/tool_errors). An environment's `step`
    starts with it: `return answer_tool_calls(text, self.tools) or self.judge(text)`."""
    from rlkit.envs.base import StepResult

    calls = parse_tool_calls(action_text)
    if not calls:
        return None
    by_name = {fn.__name__: fn for fn in tools}
    replies = [run_tool_call(call, by_name) for call in calls]
    return StepResult([{"role": "tool", "content": text} for text, _ in replies],
                      info={"tool_calls": len(calls), "tool_errors": sum(not ok for _, ok in replies)})


__all__ = ["ToolCall", "ToolCallError", "tool_schema", "parse_tool_calls", "run_tool_call", "answer_tool_calls"]
