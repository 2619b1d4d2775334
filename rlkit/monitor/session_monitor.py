"""The Session's monitor: one record per stage call, one line per step, the dashboard and the run directory.

Stage calls (`generate`, `prepare`, `learn`, `eval`) each produce a flat stats dict
under the shared naming scheme (`time/<stage>`, `throughput/<stage>_tokens_per_s`,
`reward/mean`, `actor/...`, `memory/<role>/rss_gib` ...). Each one updates the
dashboard once (so a notebook plot moves stage by stage) and is merged into the
current step's stats; `end_step` writes the step's line to `stats.jsonl` (and W&B)
and, outside a notebook, prints a compact progress line.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from rlkit.cluster.errors import WorkerDiedError
from rlkit.monitor.dashboard import Dashboard
from rlkit.monitor.progress import format_progress, in_notebook
from rlkit.monitor.runlog import RunLog

_TOKEN_KEYS = {"generate": "generated_tokens", "prepare": "tokens", "learn": "tokens"}


def batch_stats(stage: str, batch: Any) -> dict[str, float]:
    """What a stage's output batch says about the run: response lengths, reward and cost means."""
    out: dict[str, float] = {}
    if batch is None:
        return out
    if batch.response_mask is not None:
        out["response/length_mean"] = float(batch.response_mask.sum(-1).float().mean())
    if batch.scores is not None:
        key = "eval/score_mean" if stage == "eval" else "reward/mean"
        out[key] = float(batch.scores.float().mean())
    if batch.costs is not None and stage != "eval":
        out["cost/mean"] = float(batch.costs.float().mean())
    if batch.advantages is not None and batch.response_mask is not None and stage == "prepare":
        mask = batch.response_mask.bool()
        out["advantage/abs_mean"] = float(batch.advantages[mask].abs().mean()) if mask.any() else 0.0
    if stage == "prepare":  # rollout engine vs trainer (rollout_corr/*, training/rollout_probs_diff_*), any algorithm
        from rlkit.algos.rollout_correction import batch_metrics

        out.update(batch_metrics(batch))
    return out


SYNC_KEYS = ("seconds", "bytes", "peak_extra_bytes")


def memory_stats(role_stats: dict[str, list[list[dict[str, float]]]]) -> dict[str, float]:
    """`memory/<role>/rss_gib` and `memory/<role>/device_max_gib` (max over calls and ranks), the rollout
    engine's weight preparation inside `generate` (`sync/seconds`, `sync/bytes`, `sync/peak_extra_bytes`: max
    over ranks; the hf engine's in-place gather), and `rollout/fallback_sync` (1 when a generate found the
    engine's weights behind the trainer's and synced first: `Session.sync_weights` was skipped)."""
    out: dict[str, float] = {}
    for role, per_rank in role_stats.items():
        rss, dev = 0.0, 0.0
        for calls in per_rank:
            for call in calls:
                for key, value in call.items():
                    if key.endswith("/host_rss_gb"):
                        rss = max(rss, value)
                    elif key.endswith("/cuda_peak_gb"):
                        dev = max(dev, value)
                    elif key.endswith("/generate/stale"):  # the engine synced inside generate (no sync_weights)
                        out["rollout/fallback_sync"] = max(out.get("rollout/fallback_sync", 0.0), float(value))
                    elif "/sync/" in key and key.rsplit("/", 1)[1] in SYNC_KEYS:
                        name = "sync/" + key.rsplit("/", 1)[1]
                        out[name] = max(out.get(name, 0.0), float(value))
        if rss or dev:
            out[f"memory/{role}/rss_gib"] = rss
            out[f"memory/{role}/device_max_gib"] = dev
    out["memory/driver/rss_gib"] = _driver_rss_gib()
    return out


def _driver_rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


class StatsWriteError(OSError):
    """A step's stats line could not be written; the step itself was applied and counted."""


def add_resume_note(err: BaseException, run_dir: Path) -> None:
    """Tell the user of a dead worker how the run goes on: `rlkit.Session.resume(run_dir)` (once per error)."""
    latest = run_dir / "checkpoints" / "latest"
    if latest.is_file():
        note = (f"rlkit: the Session cannot go on. rlkit.Session.resume({str(run_dir)!r}) continues this run from "
                f"its latest checkpoint (the one {latest} names)")
    else:
        note = (f"rlkit: the Session cannot go on. No checkpoint of this run was saved yet ({latest} is absent: "
                f"s.save() or logging.save_every writes them, and rlkit.Session.resume({str(run_dir)!r}) then "
                f"continues from the latest); create a new rlkit.Session to start again")
    if note not in getattr(err, "__notes__", []):
        err.add_note(note)


class StageRecord(dict):
    """What a stage body hands to the monitor: `generated_tokens` / `tokens`, `batch`, `stats`."""


class SessionMonitor:
    def __init__(self, cfg: Any, run_dir: str | Path, *, roles: list[str], pop_role_stats=None, resume: Any = None):
        """`pop_role_stats()`: returns {role: per-rank lists of call stats} since the last call (or None).
        `resume`: the `rlkit.run_checkpoint.ResumePlan` of a resumed or forked run (W&B continues the saved
        run, or a fork records its parent); `restore` then brings back the history."""
        log = cfg.logging
        same_run = resume is not None and not resume.fork
        self.run_dir = Path(run_dir)
        self.dashboard = Dashboard(title=f"rlkit · {cfg.algo.name} · {self.run_dir.name}",
                                   widget=None if log.dashboard else False)
        """Live plots (a FigureWidget in a notebook); `write_html` exports them."""
        self.runlog = RunLog(self.run_dir, cfg, wandb=log.wandb, wandb_project=log.wandb_project,
                             wandb_mode=log.wandb_mode,
                             wandb_id=resume.state.get("wandb_id") if same_run else None,
                             parent=resume.parent if resume is not None else None,
                             resumed_at=resume.step if same_run else None)
        """The run directory: config.yaml, stats.jsonl, samples.jsonl (and W&B when on)."""
        self.roles = roles
        self.pop_role_stats = pop_role_stats
        self.step = 0
        """The step the current stage calls belong to (steps done + 1)."""
        self.current: dict[str, float] = {}
        """Stats of the step in progress (merged over its stage calls)."""
        self.stages: dict[str, dict[str, float]] = {}
        """The latest stats of each stage."""
        self.history: list[dict[str, float]] = []
        """Every finished step's stats, in order."""
        self.verbose = not in_notebook()
        self.log_every = log.log_every
        """Steps between two lines of stats.jsonl / W&B / the progress line (`logging.log_every`)."""
        self.closed = False
        """True once `close()` ran."""

    @contextmanager
    def stage(self, name: str) -> Iterator[StageRecord]:
        rec = StageRecord()
        start = time.perf_counter()
        try:
            yield rec
        except WorkerDiedError as err:  # the run is gone with its worker: say how to get it back
            add_resume_note(err, self.run_dir)
            raise
        self.record(name, time.perf_counter() - start, rec, role_stats=self.pop_role_stats)

    def record(self, name: str, seconds: float, rec: StageRecord | dict, *, role_stats=None) -> None:
        """Add a stage that ran `seconds` to the step in progress: what `stage` does once its block ends, and what
        the asynchronous pipeline calls for a generation that ran on the rollout pool meanwhile.
        `role_stats()`: the per-rank call stats to add (the memory and per-role time keys)."""
        stats: dict[str, float] = {f"time/{name}": seconds}
        tokens = rec.get(_TOKEN_KEYS.get(name, "tokens"))
        if tokens is not None and seconds > 0:
            stats[f"throughput/{name}_tokens_per_s"] = float(tokens) / seconds
        stats.update(batch_stats(name, rec.get("batch")))
        stats.update({k: float(v) for k, v in (rec.get("stats") or {}).items() if _is_number(v)})
        if role_stats is not None:
            stats.update(memory_stats(role_stats()))
        self.stages[name] = stats
        self.current.update(stats)
        self.dashboard.update(name, {"step": self.step + (0 if name == "eval" else 1), **stats})

    def last_stage_stats(self, name: str) -> dict[str, float]:
        return dict(self.stages.get(name, {}))

    def end_step(self, step: int, seconds: float, batch: Any = None) -> dict[str, float]:
        """Close step `step`: on every `logging.log_every`-th step log its stats line (and sample rows) and
        print the progress line; return the stats (kept in `history` for every step)."""
        stats = {"step": step, "time/step": seconds, **self.current}
        # The step was applied (the weights moved): count it before any write that can fail, so a full or
        # read-only disk never leaves the monitor one step behind the Session.
        self.history.append(stats)
        self.current = {}
        self.step = step
        logged = step % self.log_every == 0
        if logged:
            target = f"its stats line could not be written to {self.runlog.stats_path}"
            try:
                self.runlog.log(stats, step=step)
                target = f"its sample rows could not be written to {self.run_dir / 'samples.jsonl'}"
                if batch is not None:
                    self.runlog.log_samples(batch, step=step, max_rows=8)
            except OSError as err:
                raise StatsWriteError(
                    f"step {step} was applied and counted (the Session's steps_done and monitor.history hold it), "
                    f"but {target}: {err}. Free space or fix the folder's permissions, then go on: the next "
                    f"step is {step + 1}") from err
        if self.verbose and logged:
            print(format_progress(stats), flush=True)
        return stats

    def log_eval(self, step: int, stats: dict[str, float]) -> None:
        """Eval results go into the step's line (or their own line when no step is in progress)."""
        if self.current:
            self.current.update(stats)
        else:
            self.runlog.log({**stats}, step=step)

    def restore(self, step: int, history: list[dict[str, float]], *, truncate_files: bool = True) -> None:
        """Continue a resumed run after `step`: its saved `history` is back (and redrawn on the dashboard);
        with `truncate_files` (the same run directory) the stats and sample lines a crashed run wrote after
        `step` move aside, so stats.jsonl reads as one run with no step twice."""
        self.step = int(step)
        self.history = [dict(h) for h in history]
        self.current = {}
        for stats in self.history:
            self.dashboard.update("resume", stats)
        if truncate_files:
            self.runlog.truncate_after(step)

    def write_html(self) -> Path:
        return self.dashboard.write_html(self.run_dir / "dashboard.html")

    def close(self) -> None:
        """Write dashboard.html and finish the run log (W&B) once; a second call does nothing. Both are
        tried; the first error is raised after both."""
        if self.closed:
            return
        self.closed = True
        errors = []
        for finish in (self._write_final_dashboard, self.runlog.close):
            try:
                finish()
            except BaseException as err:  # noqa: BLE001 - the other part still runs; the first is raised
                errors.append(err)
        if errors:
            raise errors[0]

    def _write_final_dashboard(self) -> None:
        if self.dashboard.num_updates:
            try:
                self.write_html()
            except OSError as err:
                err.add_note(f"rlkit: writing {self.run_dir / 'dashboard.html'} failed while closing the run")
                raise


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)
