"""Reward functions in either convention, and loading one from a file or a module (`reward.path`).

Two calling conventions are accepted:

- "rlkit": `fn(response_text, ground_truth, eos_seen) -> float | dict` (positional), the built-in rules';
- "verl": `compute_score(data_source, solution_str, ground_truth, extra_info) -> float | dict` (keywords),
  verl's `custom_reward_function` (`reward.path` / `reward.name` mirror its `path` / `name`).

"auto" tells them apart by the parameter names: a function with a `data_source` or `solution_str`
parameter is verl's, anything else rlkit's. Either may be `async def`. `RewardFunction` keeps the function
with its convention and a printable name; calling it calls the function unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlkit.rewards.results import RewardRow

STYLES = ("auto", "rlkit", "verl")
VERL_PARAMS = ("data_source", "solution_str", "ground_truth", "extra_info")
_SIGNATURES = {"rlkit": "(response_text, ground_truth, eos_seen)",
               "verl": "(data_source, solution_str, ground_truth, extra_info)"}


def _config_error(message: str) -> Exception:
    from rlkit.config import ConfigError  # light: rlkit.config does not import torch

    return ConfigError(message)


def function_name(fn: Any) -> str:
    """module:qualname of a callable (a partial names the function it wraps, an object its class)."""
    inner = fn.func if isinstance(fn, functools.partial) else fn
    qualname = getattr(inner, "__qualname__", None) or type(inner).__qualname__
    module = getattr(inner, "__module__", None) or type(inner).__module__
    return f"{module}:{qualname}"


@dataclass(frozen=True)
class RewardFunction:
    """A reward function with its calling convention; `fn(...)` is called unchanged by `self(...)`."""

    fn: Callable[..., Any]
    """The user's function (sync or async)."""
    style: str
    """"rlkit" or "verl" (see the module docstring)."""
    name: str
    """How errors and logs name it: module:qualname, or file.py:name for a function loaded from a file."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def call_row(self, row: RewardRow) -> Any:
        """The function applied to one row in its convention (an awaitable for an async function)."""
        if self.style == "verl":
            return self.fn(data_source=row.data_source, solution_str=row.response_text,
                           ground_truth=row.ground_truth, extra_info=row.extra_info)
        return self.fn(row.response_text, row.ground_truth, row.eos_seen)


def detect_style(fn: Callable[..., Any]) -> str:
    """ "verl" when `fn` has a `data_source` or `solution_str` parameter, else "rlkit"."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: assume the rlkit rule
        return "rlkit"
    return "verl" if {"data_source", "solution_str"} & set(params) else "rlkit"


def signature_problem(fn: Callable[..., Any], style: str) -> str | None:
    """Why `fn` cannot be called in `style`'s convention, or None when it can."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        if style == "verl":
            sig.bind(**{p: None for p in VERL_PARAMS})
        else:
            sig.bind("", None, False)
    except TypeError as e:
        return (f"it takes {sig}, which cannot be called as {_SIGNATURES[style]} ({e}); a reward function takes "
                f"{_SIGNATURES['rlkit']} (rlkit) or {_SIGNATURES['verl']} (verl's compute_score)")
    return None


def as_reward_function(fn: Any, style: str = "auto", *, name: str | None = None) -> RewardFunction:
    """`fn` as a RewardFunction of convention `style` ("auto" decides from the parameter names);
    TypeError when it is not callable or its parameters do not fit the convention."""
    if style not in STYLES:
        raise ValueError(f"reward function style {style!r}: allowed {', '.join(STYLES)}")
    if isinstance(fn, RewardFunction):
        if style in ("auto", fn.style):
            return fn
        fn = fn.fn
    if not callable(fn):
        raise TypeError(f"a reward function must be callable, got {fn!r:.80} (a {type(fn).__name__})")
    name = name or function_name(fn)
    resolved = detect_style(fn) if style == "auto" else style
    problem = signature_problem(fn, resolved)
    if problem:
        raise TypeError(f"reward function {name}: {problem}")
    return RewardFunction(fn=fn, style=resolved, name=name)


def looks_like_file(path: str) -> bool:
    """Whether `reward.path` names a file (ends with .py, or has a directory part) rather than a module."""
    return path.endswith(".py") or "/" in path or "\\" in path or path.startswith(("~", "."))


def _import_file(path: str):
    file = Path(path).expanduser()
    if not file.is_file():
        raise _config_error(f"reward.path = {path!r}: no such file ({file.absolute()})")
    resolved = file.resolve()
    # A unique module name per file (two reward.py files in different folders do not collide), registered in
    # sys.modules while it runs so that dataclasses and pickling inside the file work.
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", file.stem)
    module_name = f"_rlkit_reward_{stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise _config_error(f"reward.path = {path!r}: {resolved} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise _config_error(f"reward.path = {path!r}: importing {resolved} raised {type(e).__name__}: {e}") from e
    return module, file.name


def _import_module(path: str):
    try:
        return importlib.import_module(path), path
    except ModuleNotFoundError as e:
        if e.name and (path == e.name or path.startswith(e.name + ".")):  # it (or its package) is missing
            raise _config_error(f"reward.path = {path!r}: not a .py file, and no importable module of that name "
                                f"({e})") from e
        raise _config_error(f"reward.path = {path!r}: importing it raised ModuleNotFoundError: {e}") from e
    except Exception as e:
        raise _config_error(f"reward.path = {path!r}: importing it raised {type(e).__name__}: {e}") from e


def _functions_of(module: Any) -> list[str]:
    """Public functions defined in `module` (falling back to every public callable it holds)."""
    own = [n for n, v in vars(module).items()
           if not n.startswith("_") and inspect.isfunction(v) and v.__module__ == module.__name__]
    return own or [n for n, v in vars(module).items()
                   if not n.startswith("_") and callable(v) and not inspect.ismodule(v)]


def load_reward_fn(path: str, name: str = "compute_score", style: str = "auto") -> RewardFunction:
    """The function `name` of the .py file or dotted module `path`, in convention `style`.

    Errors are `ConfigError`s that name the field to change: `reward.path` (no such file or module, or it
    raised while importing), `reward.name` (no such function: the functions it has are listed) and
    `reward.style` (the parameters do not fit the convention)."""
    if style not in STYLES:
        raise _config_error(f"reward.style = {style!r}: must be one of {', '.join(map(repr, STYLES))}")
    module, label = _import_file(path) if looks_like_file(path) else _import_module(path)
    obj: Any = module
    for part in name.split("."):  # "Scorer.score" reaches into a class or an object of the module
        if not hasattr(obj, part):
            names = _functions_of(module)
            raise _config_error(f"reward.name = {name!r}: {label} has no {name!r}; its functions: "
                                f"{', '.join(names) if names else 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _config_error(f"reward.name = {name!r}: {label}:{name} is a {type(obj).__name__}, not a function")
    try:
        return as_reward_function(obj, style, name=f"{label}:{name}")
    except TypeError as e:
        field = "reward.style" if style != "auto" else "reward.name"
        value = style if style != "auto" else name
        raise _config_error(f"{field} = {value!r}: {e}") from None


__all__ = ["RewardFunction", "as_reward_function", "load_reward_fn", "detect_style", "signature_problem",
           "function_name", "looks_like_file", "STYLES", "VERL_PARAMS"]
