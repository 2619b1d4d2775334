"""The built-in environments that `env.name` selects (imports nothing heavy: the config checks the name).

Each has a built-in task of the same name (`data.source`) that makes its episodes' rows, and a tiny-model
preset that learns on a CPU (`rlkit.config.presets`)."""

from __future__ import annotations

import importlib
import random
from dataclasses import dataclass
from typing import Any, Callable

BUILTIN_ENVS: dict[str, str] = {
    "guess_number": "rlkit.envs.guess_number:GuessNumber",
    "calculator": "rlkit.envs.calculator:Calculator",
}
"""env.name -> "module:class" of the environment."""


@dataclass(frozen=True)
class WarmStart:
    """How a tiny model is prepared for RL on an environment (`rlkit.envs.warmup.warm_start_for`): supervised
    fine-tuning on episodes a scripted player plays. Declared beside each built-in environment."""

    script: Callable[[random.Random], Callable[[list], str]]
    """rng -> the scripted player `act(history) -> action text`."""
    steps: int = 1000
    """Optimizer steps of 64 episodes."""
    lr: float = 3e-3
    """Peak learning rate (cosine decay to a tenth)."""
    episodes: int = 2048
    """Episodes played (over the training rows, in order)."""


def builtin_env(name: str) -> Any:
    """The environment class `env.name` names."""
    if name not in BUILTIN_ENVS:
        raise ValueError(f"env.name = {name!r}: no such built-in environment; available: {', '.join(BUILTIN_ENVS)}")
    module, attr = BUILTIN_ENVS[name].split(":")
    return getattr(importlib.import_module(module), attr)


__all__ = ["BUILTIN_ENVS", "WarmStart", "builtin_env"]
