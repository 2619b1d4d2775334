"""Run checkpoints: save a whole Session, resume it exactly, fork a new run from any checkpoint.

```
<run_dir>/checkpoints/
    step-000120/
        session.pt      the driver's state: step, config, algorithm state, prompt-stream cursor and shuffle
                        state, RNGs (torch, Python, NumPy), the monitor's history, the W&B run id
        config.yaml     the run's config, readable
        roles/actor/    each trained role's shards, AdamW state and lr schedule (rlkit.workers.checkpoint,
        roles/critic/   DCP: loads into any number of ranks), the actor's rollout call counter (sampler seeds)
        pipeline/       with rollout.async_steps >= 1: the generations that were in flight (their prompts and
                        batches, in queue order) and the rollout pool's sampler counter (rlkit.pipeline)
    latest              the name of the newest complete checkpoint ("step-000120"), replaced last
```

A save is atomic: everything goes into a hidden `.step-000120.partial-*` folder, every file is fsync-ed,
the folder is renamed into place, and only then is `latest` replaced (write + fsync + rename). A process
killed mid-save leaves the previous checkpoint and `latest` as they were; the partial folder is ignored
(and removed by the next save). Frozen roles (reference, reward and cost models) are not saved: they
load from the config's model paths again.

Resuming (`Session.resume`) builds a Session from the saved config, loads every saved role and restores
the driver state, so step k+1 of a resumed run equals step k+1 of a run that never stopped (fp32). The
run directory's `stats.jsonl` / `samples.jsonl` keep the lines up to the checkpoint's step (lines a
crashed run wrote after its last save are moved to `stats.after-step-<k>.jsonl`) and continue. A fork
(`fork=True`) starts a new run directory whose `run.json` records the parent run and step; its steps
continue the parent's numbering, so `rlkit.compare` draws parent and child aligned at the fork.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
STATE_FILE = "session.pt"
CONFIG_FILE = "config.yaml"
ROLES_DIR = "roles"
PIPELINE_DIR = "pipeline"
FORMAT = "rlkit.run-checkpoint/1"
TRAINED_ROLES = ("actor", "critic")
"""Roles with an optimizer in a Session: the ones a checkpoint holds."""


def step_dir_name(step: int) -> str:
    """`step-000120`: zero-padded so that folder names sort by step."""
    return f"step-{int(step):06d}"


@dataclass
class ResumePlan:
    """What `Session.resume` hands to the new Session: the checkpoint, its driver state, and the run's lineage."""

    checkpoint: Path
    """The `step-NNNNNN` folder to load."""
    state: dict[str, Any]
    """`session.pt`'s content."""
    fork: bool = False
    """True: a new run directory (recording `parent`); False: the same run directory continues."""
    parent: dict[str, Any] = field(default_factory=dict)
    """For a fork: {"run": parent run directory, "step": the fork step, "checkpoint": the folder}."""

    @property
    def step(self) -> int:
        return int(self.state["step"])


# ----------------------------------------------------------------------------- finding checkpoints


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first (partial folders of a killed save left out)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def find_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint folder `source` names: a run directory (its `latest`), its `checkpoints/` folder, a
    `step-NNNNNN` folder, or the `latest` file itself. FileNotFoundError saying what was looked for."""
    path = Path(source).expanduser()
    if path.is_file() and path.name == LATEST_FILE:
        path = path.parent
    if (path / STATE_FILE).is_file():
        return path
    root = path if path.name == CHECKPOINTS_DIR else path / CHECKPOINTS_DIR
    latest = root / LATEST_FILE
    if latest.is_file():
        target = root / latest.read_text(encoding="utf-8").strip()
        if (target / STATE_FILE).is_file():
            return target
        raise FileNotFoundError(f"{latest} names {target.name!r}, which is not a complete checkpoint "
                                f"(no {STATE_FILE} in {target}); complete ones: "
                                f"{[p.name for p in list_checkpoints(root.parent)] or 'none'}")
    if not path.exists():
        raise FileNotFoundError(f"Session.resume: {path} does not exist (give a run directory, its "
                                f"checkpoints/ folder or a checkpoints/step-NNNNNN folder)")
    raise FileNotFoundError(f"Session.resume: {path} holds no checkpoint (no {STATE_FILE}, no "
                            f"{CHECKPOINTS_DIR}/{LATEST_FILE}); save one with s.save() or logging.save_every")


def read_state(checkpoint: Path) -> dict[str, Any]:
    """`session.pt` of a checkpoint folder, its format checked."""
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{checkpoint / STATE_FILE}: not an rlkit run checkpoint (format {found!r}, "
                         f"expected {FORMAT!r})")
    return state


# ----------------------------------------------------------------------------- the driver's state


def capture_rng() -> dict[str, Any]:
    """The driver's random states: torch (CPU), Python's `random`, NumPy's global generator."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def algorithm_state(algo: Any) -> dict[str, Any]:
    """The algorithm's own state (adaptive KL coefficient, Safe-RLHF multiplier ...): `algo.state_dict()`
    when it has one; a stateless algorithm has none."""
    method = getattr(algo, "state_dict", None)
    return dict(method()) if callable(method) else {}


def load_algorithm_state(algo: Any, state: dict[str, Any]) -> None:
    if not state:
        return
    method = getattr(algo, "load_state_dict", None)
    if not callable(method):
        raise TypeError(f"the checkpoint holds state for algorithm {getattr(algo, 'name', type(algo).__name__)!r} "
                        f"({sorted(state)}) but this algorithm object has no load_state_dict()")
    method(state)


def driver_state(s: Any) -> dict[str, Any]:
    """Everything of a Session that lives on the driver and changes as it trains."""
    runlog = s.monitor.runlog
    return {
        "format": FORMAT,
        "step": int(s.steps_done),
        "policy_version": int(getattr(s, "policy_version", s.steps_done)),
        "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": s.config.to_dict(),
        "algorithm_name": getattr(s.algo, "name", type(s.algo).__name__),
        "algorithm": algorithm_state(s.algo),
        "prompts": s.prompts.state_dict(),
        "rng": capture_rng(),
        "history": list(s.monitor.history),
        "wandb_id": runlog.wandb.run.id if runlog.wandb is not None else None,
        "roles": {role: s._group_of[role].world_size for role in TRAINED_ROLES if role in s.roles},
        "run_dir": str(s.run_dir),
        "parent": dict(getattr(runlog, "parent", None) or {}),
    }


# ----------------------------------------------------------------------------- atomic writes


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then every folder (so the names are durable too)."""
    for root, dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for root, dirs, _ in os.walk(path, topdown=False):
        for name in dirs:
            fsync_dir(Path(root) / name)
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by `text` all at once: a reader sees the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def save_session(s: Any, path: str | os.PathLike | None = None, *, keep_last: int | None = None) -> Path:
    """Write `s`'s checkpoint (see the module docstring) and return its folder.

    path: the checkpoint folder (default `<run_dir>/checkpoints/step-<steps_done>`); `latest` is updated
        when the folder is in the run's `checkpoints/`. keep_last: keep only the newest this many
        checkpoints of the run (default `logging.keep_last`; 0 keeps all)."""
    if any(f"time/{stage}" in s.monitor.current for stage in ("generate", "prepare", "learn")):
        # a stage of the next step ran (evaluate() does not count): its prompts are drawn, the step is not counted
        warnings.warn(f"Session.save: step {s.steps_done + 1} is in progress (a stage ran since step "
                      f"{s.steps_done}); the checkpoint is of step {s.steps_done}, and the prompts that step "
                      f"{s.steps_done + 1} drew are not drawn again after a resume. Save between steps "
                      f"(after step() or train()) for an exact resume", RuntimeWarning, stacklevel=3)
    root = Path(s.run_dir) / CHECKPOINTS_DIR
    final = root / step_dir_name(s.steps_done) if path is None else Path(path).expanduser().resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_partials(final.parent)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        state = driver_state(s)
        for role in state["roles"]:
            s.roles[role].save_checkpoint(str(tmp / ROLES_DIR / role))
        if getattr(s, "pipeline", None) is not None:  # the generations in flight (rollout.async_steps)
            s.pipeline.save(tmp / PIPELINE_DIR)
        torch.save(state, tmp / STATE_FILE)
        s.config.to_yaml(tmp / CONFIG_FILE)
        fsync_tree(tmp)
        _move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint and `latest` are untouched
        raise
    if final.parent == root.resolve() or final.parent == root:
        write_text_atomic(root / LATEST_FILE, final.name + "\n")
        keep = s.config.logging.keep_last if keep_last is None else keep_last
        prune_checkpoints(s.run_dir, keep)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():  # saving the same step twice: the new one replaces it, never a mix of the two
        old = final.with_name(f".{final.name}.replaced-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)


def _remove_partials(folder: Path) -> None:
    # Left by a save whose process was killed (or a replaced checkpoint not yet deleted).
    for p in folder.glob(".step-*"):
        if p.is_dir() and (".partial-" in p.name or ".replaced-" in p.name):
            shutil.rmtree(p, ignore_errors=True)


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (never the one `latest` names); returns
    the deleted folders. `keep_last` 0 deletes nothing."""
    if not keep_last:
        return []
    found = list_checkpoints(run_dir)
    latest_file = Path(run_dir) / CHECKPOINTS_DIR / LATEST_FILE
    latest = latest_file.read_text(encoding="utf-8").strip() if latest_file.is_file() else None
    doomed = [p for p in found[:-keep_last] if p.name != latest]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


# ----------------------------------------------------------------------------- resume


def plan_resume(source: str | os.PathLike, overrides: dict | None, *, fork: bool) -> tuple[Any, ResumePlan]:
    """(the config to build the resumed Session with, the plan it restores from)."""
    from rlkit.config import Config, ConfigError

    checkpoint = find_checkpoint(source).resolve()
    state = read_state(checkpoint)
    overrides = dict(overrides or {})
    run_dir = Path(state["run_dir"])
    if checkpoint.parent.name == CHECKPOINTS_DIR:  # the run directory moved since: trust where it is now
        run_dir = checkpoint.parent.parent
    cfg = Config.from_dict(state["config"])
    if fork:
        name = overrides.pop("logging.run_name", None) or unused_name(run_dir.parent, f"{run_dir.name}-fork{state['step']}")
        where = {"logging.run_dir": overrides.pop("logging.run_dir", str(run_dir.parent)), "logging.run_name": name}
        parent = {"run": str(run_dir), "step": int(state["step"]), "checkpoint": str(checkpoint)}
    else:
        moved = [k for k in ("logging.run_dir", "logging.run_name") if k in overrides]
        if moved:
            raise ConfigError(f"Session.resume: overrides {moved} would move the run; a resumed run continues in "
                              f"{run_dir} (use fork=True to start a new run directory from this checkpoint)")
        where = {"logging.run_dir": str(run_dir.parent), "logging.run_name": run_dir.name}
        parent = dict(state.get("parent") or {})
    cfg = cfg.override({**where, **overrides})
    return cfg, ResumePlan(checkpoint=checkpoint, state=state, fork=fork, parent=parent)


def unused_name(folder: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3` ... : the first that is not a folder under `folder` yet."""
    candidate, n = name, 1
    while (folder / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    return candidate


def restore_session(s: Any, plan: ResumePlan) -> None:
    """Load `plan`'s checkpoint into the freshly built Session `s` (its roles, then the driver state)."""
    state = plan.state
    missing = [role for role in state["roles"] if role not in s.roles]
    if missing:
        raise ValueError(f"Session.resume: the checkpoint {plan.checkpoint} holds roles {missing} that this "
                         f"Session does not build (algorithm {s.algo.name!r}; the checkpoint's: "
                         f"{state.get('algorithm_name')!r})")
    for role in state["roles"]:
        s.roles[role].load_checkpoint(str(plan.checkpoint / ROLES_DIR / role))
    if state.get("algorithm_name") == getattr(s.algo, "name", None):  # a fork may change the algorithm
        load_algorithm_state(s.algo, state["algorithm"])
    s.prompts.load_state_dict(state["prompts"])
    restore_rng(state["rng"])
    s.steps_done = plan.step
    s.policy_version = int(state.get("policy_version", plan.step))
    in_flight = plan.checkpoint / PIPELINE_DIR
    if in_flight.is_dir() and getattr(s, "pipeline", None) is not None:
        s.pipeline.load(in_flight)
    elif in_flight.is_dir():
        warnings.warn(f"Session.resume: {in_flight} holds rollouts generated ahead (rollout.async_steps = "
                      f"{state['config']['rollout'].get('async_steps')}) that this synchronous run does not "
                      f"use: their prompts are skipped", RuntimeWarning, stacklevel=3)
    s.monitor.restore(plan.step, state["history"], truncate_files=not plan.fork)
    # The engines take the loaded weights now, outside any step's stats (as after a learn in the run that
    # never stopped), so the first resumed generate needs no fallback sync.
    s.roles["actor"].sync_weights()


def lineage(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The `parent` record of a run's `run.json` ({} for a run that is not a fork)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8")).get("parent") or {})


__all__ = ["ResumePlan", "save_session", "find_checkpoint", "list_checkpoints", "prune_checkpoints", "plan_resume",
           "restore_session", "step_dir_name", "lineage"]
