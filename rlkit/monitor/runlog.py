"""The run directory: config, one json line of stats per step, samples; optionally mirrored to W&B.

```
<run_dir>/
  config.yaml     the run's config (a nested dict)
  stats.jsonl     one json object per logged step: {"step": 3, "reward/mean": 0.42, ...}
  samples.jsonl   one json object per logged sample row: {"step": 3, "prompt": ..., "response": ...}
  run.json        name, creation time and the W&B run (id, path, mode) when there is one
  wandb/          the W&B run folder (with wandb=True)
```

Lines are appended and flushed one by one, so a crashed run keeps every step it
finished; `read_stats` tolerates a cut last line. Non-finite floats are written as
`NaN` / `Infinity` (Python's json reads them back).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import yaml

from rlkit.monitor.progress import as_float

CONFIG_FILE = "config.yaml"
STATS_FILE = "stats.jsonl"
SAMPLES_FILE = "samples.jsonl"
RUN_FILE = "run.json"


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if hasattr(config, "to_dict"):  # rlkit.Config
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"RunLog: config must be a dict or have .to_dict(), got {type(config).__name__}")
    return dict(config)


def _jsonable(value: Any) -> Any:
    """Numbers (incl. 0-d tensors, numpy scalars) as float/int, text and None as is, others as str."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, numbers.Integral):  # numpy ints
        return int(value)
    number = as_float(value)
    if number is not None:
        return number
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _append_lines(path: Path, items: Sequence[Mapping[str, Any]]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
        f.flush()


class RunLog:
    """Writes a run directory (see the module docstring); with `wandb=True` also logs to a W&B run."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        config: Any = None,
        *,
        wandb: bool = False,
        wandb_project: str = "rlkit",
        wandb_mode: str = "offline",
        wandb_name: Optional[str] = None,
        wandb_entity: Optional[str] = None,
        wandb_id: Optional[str] = None,
        parent: Optional[Mapping[str, Any]] = None,
        resumed_at: Optional[int] = None,
    ):
        """`config`: a nested dict or an `rlkit.Config`; `wandb_mode`: online, offline or disabled.
        The W&B run is named after the folder unless `wandb_name` is given. An existing run
        directory is appended to (a resumed run continues its stats.jsonl). `wandb_id`: continue that W&B run
        (a resumed run); `parent`: a fork's parent run and step, kept in run.json; `resumed_at`: the step a
        resumed run continues from (added to run.json's `resumed` list)."""
        self.run_dir = Path(run_dir)
        """The run's folder."""
        self.config = _config_dict(config)
        """The config as a nested dict (what config.yaml holds)."""
        self.step = -1
        """The last step logged (-1 before the first)."""
        self.wandb = None
        """The `WandbLogger` when W&B is on, else None."""
        self._closed = False
        self.parent = dict(parent) if parent else None
        """A fork's origin: {"run": parent run directory, "step": fork step, "checkpoint": folder}, else None."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / CONFIG_FILE).write_text(yaml.safe_dump(_jsonable(self.config), sort_keys=False), encoding="utf-8")
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        info: dict[str, Any] = {"name": self.run_dir.name, "created": now}
        previous = self.run_dir / RUN_FILE
        if resumed_at is not None and previous.is_file():  # a resumed run keeps its record and adds the resume
            info = {**json.loads(previous.read_text(encoding="utf-8")), "name": self.run_dir.name}
            info["resumed"] = [*info.get("resumed", []), {"step": int(resumed_at), "time": now}]
        if self.parent:
            info["parent"] = self.parent
        if wandb:
            from rlkit.monitor.wandb_log import WandbLogger

            self.wandb = WandbLogger(
                project=wandb_project,
                config=self.config,
                run_dir=self.run_dir,
                mode=wandb_mode,
                name=wandb_name or self.run_dir.name,
                entity=wandb_entity,
                run_id=wandb_id,
            )
            local = self.wandb.local_dir
            info["wandb"] = {
                "id": self.wandb.run.id,
                "path": self.wandb.path,
                "mode": wandb_mode,
                "dir": None if local is None else os.path.relpath(local, self.run_dir),
            }
        (self.run_dir / RUN_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    @property
    def stats_path(self) -> Path:
        """`<run_dir>/stats.jsonl`."""
        return self.run_dir / STATS_FILE

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise RuntimeError(f"RunLog.{what}: the run log of {self.run_dir} is closed")

    def log(self, stats: Mapping[str, Any], step: Optional[int] = None) -> dict[str, Any]:
        """Append one step's stats (a flat dict) to stats.jsonl and W&B; returns the line written.

        The step is `step`, else `stats["step"]`, else the last step + 1.
        """
        self._check_open("log")
        if step is None:
            step = stats.get("step", self.step + 1)
        step_number = as_float(step)
        if step_number is None or not math.isfinite(step_number):
            raise TypeError(f"RunLog.log: step must be an int, got {step!r}")
        self.step = int(step_number)
        line = {"step": self.step, **{str(k): _jsonable(v) for k, v in stats.items() if k != "step"}}
        _append_lines(self.stats_path, [line])
        if self.wandb is not None:
            self.wandb.log(line, step=self.step)
        return line

    def truncate_after(self, step: int) -> int:
        """Move the stats and sample lines with a step above `step` (written by a run that crashed after its
        last checkpoint) to `stats.after-step-<step>.jsonl` / `samples.after-step-<step>.jsonl`; returns how
        many stats lines moved. Each file is replaced atomically."""
        moved = 0
        for name in (STATS_FILE, SAMPLES_FILE):
            path = self.run_dir / name
            if not path.is_file():
                continue
            rows = read_jsonl(path)
            keep, later = [], []
            for row in rows:
                row_step = as_float(row.get("step"))
                (later if row_step is not None and row_step > step else keep).append(row)
            if not later:
                continue
            moved += len(later) if name == STATS_FILE else 0
            _append_lines(path.with_name(f"{path.stem}.after-step-{step}.jsonl"), later)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.unlink(missing_ok=True)
            _append_lines(tmp, keep)
            os.replace(tmp, path)
        self.step = int(step)
        return moved

    def log_samples(self, rows: Any, step: Optional[int] = None, *, max_rows: int = 16) -> list[dict[str, Any]]:
        """Append sample rows to samples.jsonl and log them as a W&B table `samples`.

        `rows`: dicts (e.g. `batch_table_rows(batch)`), or a Batch (its first `max_rows` rows).
        Returns the rows written (each with its `step`).
        """
        self._check_open("log_samples")
        if not isinstance(rows, (list, tuple)):
            from rlkit.monitor.batch_view import batch_table_rows

            rows = batch_table_rows(rows, max_rows=max_rows)
        step = self.step if step is None else int(step)
        written = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(f"RunLog.log_samples: row {i} is a {type(row).__name__}, not a dict")
            written.append({"step": step, **{str(k): _jsonable(v) for k, v in row.items() if k != "step"}})
        _append_lines(self.run_dir / SAMPLES_FILE, written)
        if self.wandb is not None and written:
            self.wandb.log_table("samples", written, step=max(step, 0))
        return written

    def close(self) -> None:
        """Finish the W&B run (idempotent). The files are complete after every call anyway."""
        if not self._closed:
            self._closed = True
            if self.wandb is not None:
                self.wandb.finish()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        if self.wandb is not None and exc_type is not None and not self._closed:
            self._closed = True
            self.wandb.finish(exit_code=1)  # mark the W&B run failed
        self.close()


# ------------------------------------------------------------------- read


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every json object of a .jsonl file. A cut LAST line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            out.append(json.loads(text))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a json line ({err.msg})") from err
    return out


def read_stats(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The stats lines of a run directory, in order."""
    return read_jsonl(Path(run_dir) / STATS_FILE)


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The config dict of a run directory ({} when config.yaml is absent)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
