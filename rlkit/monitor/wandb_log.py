"""Weights & Biases logging: a thin owner of one `wandb` run (init, log, samples table, finish).

`wandb` is imported only when a logger is made, so rlkit works without it when
`logging.wandb` is off. Offline mode (`mode="offline"`) needs no network: the run
lands in `<run_dir>/wandb/offline-run-*/` and can be uploaded later with
`wandb sync`, or read back by `rlkit.compare`.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

WANDB_MODES = ("online", "offline", "disabled")


def import_wandb():
    """`import wandb`, with an error that says how to do without it."""
    try:
        import wandb
    except ImportError as err:  # pragma: no cover - wandb is a dependency
        raise ImportError(
            "W&B logging needs the `wandb` package: `pip install wandb`, or set logging.wandb=False"
        ) from err
    return wandb


class WandbLogger:
    """One W&B run. Several can be open in one process (a notebook comparing runs): each logs to its own."""

    def __init__(
        self,
        *,
        project: str,
        config: Mapping[str, Any],
        run_dir: str | os.PathLike,
        mode: str = "offline",
        name: Optional[str] = None,
        entity: Optional[str] = None,
        tags: Optional[Sequence[str]] = None,
        run_id: Optional[str] = None,
    ):
        """`run_dir`: where wandb writes its `wandb/` folder; `mode`: one of WANDB_MODES; `run_id`: continue
        that run (a resumed rlkit run: its steps carry on after the saved ones) instead of starting one."""
        if mode not in WANDB_MODES:
            raise ValueError(f"logging.wandb_mode must be one of {WANDB_MODES}, got {mode!r}")
        wandb = import_wandb()
        self._wandb = wandb
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            tags=list(tags) if tags else None,
            config=dict(config),
            # Absolute: a W&B service shared with a parent process (WANDB_SERVICE in the environment)
            # resolves a relative path against its own working directory, not ours.
            dir=str(Path(run_dir).resolve()),
            mode=mode,
            # Another open run (an earlier Session in the same notebook) keeps logging to its own run.
            reinit="create_new",
            id=run_id,
            resume="allow" if run_id else None,
        )
        """The `wandb.Run`."""
        self.mode = mode
        """W&B mode the run was started in."""
        self._finished = False

    @property
    def path(self) -> str:
        """`entity/project/run_id` (what `rlkit.compare` takes for an online run)."""
        return "/".join(str(part) for part in self.run.path) if isinstance(self.run.path, (list, tuple)) else str(self.run.path)

    @property
    def local_dir(self) -> Optional[Path]:
        """The run's local folder (`.../wandb/offline-run-*` offline), None when disabled."""
        if self.mode == "disabled":
            return None
        return Path(self.run.dir).parent  # run.dir is <run folder>/files

    def log(self, stats: Mapping[str, Any], step: int) -> None:
        """Log one flat dict of numbers at `step` (steps must not decrease)."""
        self.run.log(dict(stats), step=int(step))

    def log_table(self, key: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """Log `rows` (dicts; the union of their keys, in first-seen order, are the columns) as a wandb.Table."""
        columns: list[str] = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
        data = [[_table_cell(row.get(c)) for c in columns] for row in rows]
        self.run.log({key: self._wandb.Table(columns=columns, data=data)}, step=int(step))

    def finish(self, exit_code: int = 0, flush_timeout: float = 30.0) -> None:
        """Close the run (idempotent). An offline run is complete on disk when this returns."""
        if self._finished:
            return
        self._finished = True
        self.run.finish(exit_code=exit_code)
        if self.mode == "offline":
            self._wait_for_log(flush_timeout)

    def _wait_for_log(self, timeout: float) -> None:
        # wandb 0.31's finish() returns once the service has the exit record, but the service
        # writes the run-*.wandb file in the background (we saw it hold only its 7-byte header
        # right after finish). Wait for the exit record so that `compare` right after finish
        # reads the whole run.
        from rlkit.monitor.wandb_read import has_exit_record

        # The file itself may not exist yet either (seen in CI): wait for it within the same deadline.
        folder = self.local_dir
        if folder is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = sorted(folder.glob("run-*.wandb"))
            try:
                if files and has_exit_record(files[0]):
                    return
            except (OSError, ValueError):  # header not written yet, or a chunk mid-write
                pass
            time.sleep(0.05)
        warnings.warn(f"W&B offline run in {folder} has no complete run-*.wandb file {timeout:.0f} s after "
                      "finish(); it may be incomplete until this process exits", RuntimeWarning, stacklevel=3)


def _table_cell(value: Any) -> Any:
    # wandb.Table wants one type per column: keep numbers and str, render the rest as text.
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
