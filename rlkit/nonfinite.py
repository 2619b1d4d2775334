"""Non-finite rewards and skipped updates never pass silently (`actor.on_nonfinite`).

Two checks the Session runs on every step, as small pure functions:

- `check_scores`: after the scores (and costs) are computed, the rows whose score is NaN, inf, or so large
  that the advantages overflow. GRPO-style normalisation squares the centred scores and sums them over a
  group: float32 holds 3.4e38, so with |score| above about 1e19 / sqrt(group size) the group's std is inf and
  every advantage of the group comes out 0 (or NaN), and the step trains on nothing. No reward rule or model
  means a score beyond `MAX_ABS_SCORE` (1e15): such a value is a bug (a sentinel like 1e30 for "invalid", an
  unnormalised sum), reported like NaN. (A rule returning 1e39 passes Python's isfinite but is inf in the
  float32 scores tensor: caught here too.)
- `check_update`: after an update, the optimizer steps that were skipped. `Optimizer.step` drops the
  gradients and leaves the weights as they were when the gradient norm is not finite (NaN/inf in the
  advantages, the loss or the gradients); the role's stats count them (`<role>/skipped_steps`, and
  `<role>/skipped`, the fraction of the call's optimizer steps).

`mode` is `actor.on_nonfinite`: "skip" warns (RuntimeWarning, naming the step and the rows or the role) and
goes on (the optimizer skips what it cannot apply, counted); "raise" stops with `NonFiniteError`.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import torch

MODES = ("skip", "raise")
"""The values of `actor.on_nonfinite`."""

MAX_ABS_SCORE = 1e15
"""Scores beyond +-this are reported with the non-finite ones (see the module docstring)."""

SHOWN_ROWS = 8
"""Row indices (and values) a message lists before "...": the first few are enough to find the rule's bug."""


class NonFiniteError(ValueError):
    """`actor.on_nonfinite = "raise"` stopped the run: non-finite scores, or optimizer steps skipped."""


def bad_rows(values: torch.Tensor) -> list[int]:
    """Indices of the rows of `values` (B,) that are NaN, inf, or beyond +-`MAX_ABS_SCORE`."""
    values = values.detach().reshape(-1).double()
    bad = ~torch.isfinite(values) | (values.abs() > MAX_ABS_SCORE)  # (B,)
    return bad.nonzero().reshape(-1).tolist()


def check_scores(scores: torch.Tensor | None, *, step: int, field: str = "scores", mode: str = "skip") -> list[int]:
    """Warn ("skip") or raise `NonFiniteError` ("raise") when rows of `scores` (B,) are NaN, inf or beyond
    +-`MAX_ABS_SCORE`, naming the step, the field and the first rows with their values. Returns the bad rows."""
    _check_mode(mode)
    if scores is None or scores.numel() == 0:
        return []
    rows = bad_rows(scores)
    if not rows:
        return []
    flat = scores.detach().reshape(-1)
    shown = rows[:SHOWN_ROWS]
    more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
    values = ", ".join(f"{float(flat[i]):g}" for i in shown)
    what = (f"step {step}: {field} of {len(rows)} of {len(flat)} rows are NaN, inf or beyond +-{MAX_ABS_SCORE:g} "
            f"(rows {shown}{more}; values {values}). Check the reward function or model (a huge finite score "
            f"also breaks the advantages: a group's std overflows and its advantages come out 0 or NaN)")
    if mode == "raise":
        raise NonFiniteError(f"{what}. actor.on_nonfinite = 'raise' stopped the step before any update: "
                             f"the weights were not changed.")
    warnings.warn(f"{what}. The step goes on: the optimizer skips an update whose gradient norm is not "
                  f"finite (counted in actor/skipped_steps); set actor.on_nonfinite = 'raise' to stop instead.",
                  RuntimeWarning, stacklevel=2)
    return rows


def check_rewards(fields: Mapping[str, torch.Tensor], *, step: int, mode: str) -> None:
    """`check_scores` on the "scores" and "costs" among `fields` (what `Session.compute` just computed)."""
    for name in ("scores", "costs"):
        if fields.get(name) is not None:
            check_scores(fields[name], step=step, field=name, mode=mode)


def skipped_steps(stats: Mapping[str, float], role: str) -> tuple[int, int]:
    """(skipped optimizer steps, optimizer steps) of `role`'s update in `stats` ((0, 0) when it has none).

    `<role>/skipped_steps` is their count (`mean_of_steps`); without it, `<role>/skipped` (their fraction,
    the mean over steps of 0/1) times `<role>/optimizer_steps`."""
    total = stats.get(f"{role}/optimizer_steps")
    count = stats.get(f"{role}/skipped_steps")
    if count is None:
        fraction = stats.get(f"{role}/skipped")
        if fraction is None:
            return 0, int(total or 0)
        count = float(fraction) * float(total or 1)
    total = float(total) if total is not None else float(count)
    if not (math.isfinite(float(count)) and math.isfinite(total)):
        return 0, 0
    return int(round(float(count))), int(round(total))


def check_update(stats: Mapping[str, float], *, step: int, role: str = "actor", mode: str = "skip") -> int:
    """Warn ("skip") or raise `NonFiniteError` ("raise") when optimizer steps of `role`'s update were skipped
    (non-finite gradient norm), naming the step and the role. Returns the number skipped."""
    _check_mode(mode)
    skipped, total = skipped_steps(stats, role)
    if skipped == 0:
        return 0
    grad_norm = stats.get(f"{role}/grad_norm")
    norm = f" (mean grad_norm {float(grad_norm):g})" if grad_norm is not None else ""
    what = (f"step {step}: {skipped} of {total} optimizer steps of the {role} were skipped: the gradient norm was "
            f"not finite{norm} (NaN/inf in the advantages, the loss or the gradients; see the scores' warnings)")
    if skipped >= total:
        changed = f"the {role}'s weights were NOT changed (the optimizer dropped those gradients)"
    else:
        changed = (f"the other {total - skipped} steps were applied, so the {role}'s weights did change and the "
                   f"rollout engines were not synced: rlkit.Session.resume(run_dir) goes back to the latest checkpoint")
    if mode == "raise":
        raise NonFiniteError(f"{what}. actor.on_nonfinite = 'raise' stopped before the weight sync and the step is "
                             f"not counted; {changed}.")
    warnings.warn(f"{what}; {changed}. Counted in {role}/skipped_steps; set actor.on_nonfinite = 'raise' to stop "
                  f"instead.", RuntimeWarning, stacklevel=2)
    return skipped


def check_updates(stats: Mapping[str, float], *, step: int, mode: str,
                  roles: tuple[str, ...] = ("actor", "critic")) -> None:
    """`check_update` for each of `roles` whose update is in `stats` (what `Session.learn` just ran)."""
    for role in roles:
        if f"{role}/optimizer_steps" in stats or f"{role}/skipped" in stats:
            check_update(stats, step=step, role=role, mode=mode)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"actor.on_nonfinite = {mode!r}: must be one of {', '.join(map(repr, MODES))}")


__all__ = ["MODES", "MAX_ABS_SCORE", "NonFiniteError", "bad_rows", "check_scores", "check_rewards", "skipped_steps",
           "check_update", "check_updates"]
