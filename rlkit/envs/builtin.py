"""The built-in environments that `env.name` selects (imports nothing heavy: the config checks the name).

Each has a built-in task of the same name (`data.source`) that makes its episodes' rows, and a tiny-model
preset that learns on a CPU (`rlkit.config.presets`)."""

from __future__ import annotations

import importlib
from typing import Any

BUILTIN_ENVS: dict[str, str] = {
    "guess_number": "rlkit.envs.guess_number:GuessNumber",
    "calculator": "rlkit.envs.calculator:Calculator",
}
"""env.name -> "module:class" of the environment."""


def builtin_env(name: str) -> Any:
    """The environment class `env.name` names."""
    if name not in BUILTIN_ENVS:
        raise ValueError(f"env.name = {name!r}: no such built-in environment; available: {', '.join(BUILTIN_ENVS)}")
    module, attr = BUILTIN_ENVS[name].split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["BUILTIN_ENVS", "builtin_env"]
