"""rlkit: a Jupyter-first research toolkit for reinforcement learning on language models.

The top-level names are imported lazily so that `import rlkit` stays fast and a
notebook only pays for Ray, transformers or plotly when it uses them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "Batch": "rlkit.batch",
    "Config": "rlkit.config",
    "ConfigError": "rlkit.config",
    "Session": "rlkit.session",
    "plan": "rlkit.planner",
    "compare": "rlkit.monitor.compare",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
