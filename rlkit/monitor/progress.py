"""Progress reporting: notebook detection, a one-line summary of a step, a tqdm bar over RL steps.

Light on purpose (no plotly, no torch): the CLI imports it for every run.

```python
from rlkit.monitor.progress import StepProgress, format_progress

format_progress({"step": 3, "reward/mean": 0.42, "time/learn": 1.23}, total=10)
# 'step 3/10 | reward 0.42 | learn 1.23s'
with StepProgress(total=10, desc="grpo") as bar:
    for step in range(10):
        bar.advance(stats)       # one tick, stats shown after the bar
```
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Iterable, Mapping, Optional

# (stats key, label, unit) in display order; a key absent from the stats is skipped.
PROGRESS_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("reward/mean", "reward", ""),
    ("cost/mean", "cost", ""),
    ("eval/accuracy", "acc", ""),
    ("actor/kl", "kl", ""),
    ("response/length_mean", "len", ""),
    ("throughput/generate_tokens_per_s", "gen", " tok/s"),
    ("time/learn", "learn", "s"),
    ("time/step", "step time", "s"),
)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython with a kernel attached), False in a terminal or a script.

    Checks `sys.modules` first so that a plain script never pays for importing IPython.
    """
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    # A terminal IPython shell has no `kernel`; ZMQInteractiveShell (Jupyter, VS Code) has one.
    return shell is not None and getattr(shell, "kernel", None) is not None


def as_float(value: Any) -> Optional[float]:
    """A stats value as a float (bools, ints, floats, numpy scalars, 1-element tensors); None otherwise."""
    if isinstance(value, numbers.Real):  # numpy scalars register as numbers.Real too
        return float(value)
    item = getattr(value, "item", None)  # torch tensors and numpy arrays
    if callable(item):
        try:
            value = item()
        except (ValueError, RuntimeError):  # more than one element
            return None
        return float(value) if isinstance(value, numbers.Real) else None
    return None


def format_number(value: Any) -> str:
    """Compact number: 3 significant digits below 100, no decimals from 100 up (tokens/s read better)."""
    number = as_float(value)
    if number is None:
        return str(value)
    if not math.isfinite(number):
        return str(number)
    if isinstance(value, (int, numbers.Integral)) and not isinstance(value, bool):
        return str(int(value))
    return f"{number:.0f}" if abs(number) >= 100 else f"{number:.3g}"


def format_progress(stats: Mapping[str, Any], total: Optional[int] = None, *, with_step: bool = True) -> str:
    """One line for a terminal: `step 3/10 | reward 0.42 | gen 512 tok/s | learn 1.2s`.

    `stats`: a flat dict in the rlkit naming scheme (keys absent are skipped);
    `total`: the number of steps of the run, shown as `step/total` when given;
    `with_step`: False leaves out the step part (tqdm already shows it).
    """
    parts = []
    if with_step and "step" in stats:
        step = stats["step"]
        parts.append(f"step {step}/{total}" if total is not None else f"step {step}")
    for key, label, unit in PROGRESS_FIELDS:
        if key in stats and stats[key] is not None:
            parts.append(f"{label} {format_number(stats[key])}{unit}")
    return " | ".join(parts)


def progress_bar(iterable: Optional[Iterable] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
                 **kwargs: Any):
    """A `tqdm.auto` bar: a widget in notebooks, text in a terminal. Extra kwargs go to tqdm."""
    from tqdm.auto import tqdm  # lazy: tqdm.auto probes for ipywidgets

    return tqdm(iterable, total=total, desc=desc, **kwargs)


class StepProgress:
    """A bar over RL steps whose postfix is the latest `format_progress` line.

    `advance(stats)` ticks once per RL step; `disable=True` turns it into a no-op
    (for `Session(..., progress=False)` and tests). Use as a context manager or call `close()`.
    """

    def __init__(self, total: Optional[int] = None, desc: str = "train", *, disable: bool = False,
                 initial: int = 0):
        self.total = total
        """Number of steps the bar counts to (None: an open-ended counter)."""
        self.last_line = ""
        """The last stats line shown (also kept when the bar is disabled)."""
        self._n = initial  # counted here: a disabled tqdm does not count
        self._bar = progress_bar(total=total, desc=desc, unit="step", disable=disable, initial=initial,
                                 leave=True, dynamic_ncols=True)

    @property
    def n(self) -> int:
        """Steps counted so far."""
        return self._n

    def advance(self, stats: Mapping[str, Any], steps: int = 1) -> str:
        """Count `steps` more steps and show `stats` after the bar; returns the stats line."""
        self.last_line = format_progress(stats, with_step=False)
        self._bar.set_postfix_str(self.last_line, refresh=False)  # refreshed by update() below
        self._bar.update(steps)
        self._n += steps
        return self.last_line

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        self._bar.close()

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
