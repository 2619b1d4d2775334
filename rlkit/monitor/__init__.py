"""Monitoring: measurement (`stats`), the live dashboard, sample views, the run directory, W&B, compare.

Names are imported lazily: `import rlkit.monitor` costs nothing until plotly or
wandb is actually used.
"""

from __future__ import annotations

import importlib

# public name -> module that defines it
_LAZY = {
    # dashboard.py
    "Dashboard": "rlkit.monitor.dashboard",
    "PANELS": "rlkit.monitor.dashboard",
    # progress.py
    "StepProgress": "rlkit.monitor.progress",
    "format_progress": "rlkit.monitor.progress",
    "progress_bar": "rlkit.monitor.progress",
    "in_notebook": "rlkit.monitor.progress",
    # batch_view.py
    "batch_table_rows": "rlkit.monitor.batch_view",
    "batch_table_html": "rlkit.monitor.batch_view",
    "token_view_html": "rlkit.monitor.batch_view",
    # runlog.py
    "RunLog": "rlkit.monitor.runlog",
    "read_stats": "rlkit.monitor.runlog",
    # wandb_log.py / wandb_read.py
    "WandbLogger": "rlkit.monitor.wandb_log",
    "read_offline_run": "rlkit.monitor.wandb_read",
    # compare.py
    "compare": "rlkit.monitor.compare",
    "Comparison": "rlkit.monitor.compare",
    "ConfigDiff": "rlkit.monitor.compare",
    "RunData": "rlkit.monitor.compare",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rlkit.monitor' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
