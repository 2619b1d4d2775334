"""The Session's pure helpers: per-rank stats reduction, role placement, the run directory, batch checks.

Kept apart from `rlkit/session.py` so the Session class reads as the stages and lifecycle of a run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from rlkit.batch import Batch
from rlkit.config import Config


# What `Session.compute` (an algorithm's `s.compute(batch, ...)`) can add to a batch.
COMPUTABLE_FIELDS = ("scores", "old_logprobs", "ref_logprobs", "values")

# Per-rank measurement suffixes and how ranks combine: the slowest rank sets the time and the fullest
# one the memory (max); counts and rates add up over ranks (sum); utilisation is the ranks' mean.
_RANK_MAX = ("/seconds", "/host_rss_gb", "/host_peak_rss_gb", "/cuda_peak_gb")
_RANK_SUM = ("/tokens_per_s", "/flops")
_RANK_MEAN = ("/mfu",)


def reduce_rank_stats(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """One stats dict from a role's per-rank `update` results.

    The loss metrics (`actor/pg_loss`, `actor/kl`, ...) are already all-reduced on the workers (identical on
    every rank: their mean is that value). Each rank's own measurements of the call (`<role>/<call>/<name>`)
    combine as `_RANK_MAX` / `_RANK_SUM` / `_RANK_MEAN` say; a call's `tokens` are summed (each rank counts
    its own rows), and anything else is averaged over ranks.
    """
    if not per_rank:
        return {}
    keys = list(dict.fromkeys(k for r in per_rank for k in r))
    out = {}
    for key in keys:
        values = [float(r[key]) for r in per_rank if key in r]
        measured = key.count("/") >= 2  # <role>/<call>/<name>: a per-rank measurement
        if measured and key.endswith(_RANK_MAX):
            out[key] = max(values)
        elif measured and (key.endswith(_RANK_SUM) or key.endswith("/tokens")):
            out[key] = sum(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def placement_of(cfg: Config, roles: list[str], backend: str) -> list[tuple[list[str], int]]:
    """Which roles share devices, from `cluster.placement`:

    - "colocate": every role on all devices (one process per device holds them all);
    - "split": the actor on its own devices, the other roles together on as many others;
    - "auto": the planner's choice (`rlkit.plan`) for this config on this cluster.
    The local backend has one process: everything is colocated.
    """
    devices = cfg.cluster.nodes * cfg.cluster.devices_per_node
    mode = cfg.cluster.placement
    if backend == "local" or len(roles) == 1 or mode == "colocate":
        return [(roles, devices)]
    if mode == "split":
        return [(["actor"], devices), ([r for r in roles if r != "actor"], devices)]
    from rlkit.planner import plan_from_config

    pools = plan_from_config(cfg).to_pools()
    out = [([r for r in pool.roles if r in roles], pool.devices) for pool in pools]
    out = [(names, n) for names, n in out if names]
    placed = {r for names, _ in out for r in names}
    missing = [r for r in roles if r not in placed]
    if missing:  # roles the planner's dataflow does not model ride with the actor
        out[0] = (out[0][0] + missing, out[0][1])
    out.sort(key=lambda item: "actor" not in item[0])  # the actor's group first
    return out


class RunDirectoryError(OSError):
    """The run directory cannot be used: not creatable or writable, or it already holds another run."""


def run_directory(cfg: Config, *, resume: bool = False) -> Path:
    """`logging.run_dir/logging.run_name`, created and checked writable. The Session calls it before Ray or any
    worker starts, so a bad folder fails in a second with the fields named.

    A named run refuses a folder that already holds a run (`existing_run`: steps in stats.jsonl, or
    checkpoints): appending would write its step numbers twice. `resume=True` (`Session.resume` continuing
    that run) allows it. Without a name the folder is `<algo.name>-<date>-<time>`, with `-2`, `-3`, ... when
    that exists (two Sessions made within one second), so such runs never share a folder.
    Raises `RunDirectoryError` naming `logging.run_dir` / `logging.run_name` and the path."""
    log = cfg.logging
    root = Path(log.run_dir).expanduser()
    if log.run_name is None:
        path = _fresh_folder(root, time.strftime(f"{cfg.algo.name}-%Y%m%d-%H%M%S"), cfg)
    else:
        path = root / log.run_name
        found = None if resume else existing_run(path)
        if found:
            raise RunDirectoryError(
                f"logging.run_dir / logging.run_name = {str(path)!r} already holds a run ({found}); a new run "
                f"there would append duplicate step numbers to its stats.jsonl. To continue that run: "
                f"rlkit.Session.resume({str(path)!r}). To start a new one: set another logging.run_name (or "
                f"None for a timestamped name), or delete the folder")
        _make_folder(path, cfg, exist_ok=True)
    check_writable(path, cfg)
    return path


def existing_run(path: Path) -> str | None:
    """What makes `path` hold a run already: a stats.jsonl with at least one line, or a checkpoints/ folder
    (None when neither: a fresh, empty or never-stepped folder can be reused)."""
    stats = path / "stats.jsonl"
    try:
        text = stats.read_text(encoding="utf-8") if stats.is_file() else ""
    except OSError:  # unreadable: the write check that follows names the folder
        text = ""
    lines = sum(1 for line in text.splitlines() if line.strip())
    if lines:
        return f"{lines} line{'s' if lines > 1 else ''} in stats.jsonl"
    if (path / "checkpoints").is_dir():
        return "a checkpoints/ folder"
    return None


def check_writable(path: Path, cfg: Config) -> None:
    """Write and remove a small file in `path`; `RunDirectoryError` naming the fields when that fails."""
    probe = path / ".rlkit-write-check"
    try:
        with open(probe, "w", encoding="utf-8") as f:
            f.write("rlkit checks that the run directory is writable\n")
        probe.unlink()
    except OSError as err:
        raise _folder_error(path, cfg, err) from err


def _make_folder(path: Path, cfg: Config, *, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if not exist_ok and path.exists():
            raise  # the caller picks another name
        raise _folder_error(path, cfg, FileExistsError(f"{path} exists and is not a folder")) from None
    except OSError as err:
        raise _folder_error(path, cfg, err) from err


def _fresh_folder(root: Path, base: str, cfg: Config) -> Path:
    """`root/base`, or `root/base-2`, `root/base-3`, ...: the first that did not exist, created (atomically:
    mkdir fails on an existing folder, so two processes never take the same one)."""
    _make_folder(root, cfg, exist_ok=True)
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            _make_folder(path, cfg, exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise _folder_error(root / base, cfg, FileExistsError(f"{root / base}-2 ... -9999 all exist"))


def _folder_error(path: Path, cfg: Config, err: OSError) -> RunDirectoryError:
    reason = err.strerror or str(err)
    return RunDirectoryError(
        f"logging.run_dir / logging.run_name: cannot use {str(path)!r} as the run directory ({type(err).__name__}: "
        f"{reason}). Set logging.run_dir (now {cfg.logging.run_dir!r}) to a writable folder, or another "
        f"logging.run_name (now {cfg.logging.run_name!r})")


def check_batch_fits(batch: Batch, stage: str, *, vocab_size: int, max_new_tokens: int) -> None:
    """ValueError naming every mismatch between `batch` and the session: token ids outside the
    model's vocabulary, responses longer than `rollout.max_new_tokens`."""
    problems = []
    for ids_name, mask_name in (("prompt_ids", "prompt_mask"), ("response_ids", "response_mask")):
        ids, mask = getattr(batch, ids_name), getattr(batch, mask_name)
        if ids is None or ids.numel() == 0:
            continue
        valid = mask.bool() if mask is not None else torch.ones_like(ids, dtype=torch.bool)  # (B, L)
        bad = valid & ((ids >= vocab_size) | (ids < 0))  # (B, L): real tokens the model cannot embed
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            problems.append(f"Batch.{ids_name}[{row}, {col}] = {int(ids[row, col])} is outside the session's "
                            f"model vocabulary of {vocab_size} tokens (model.path / model.preset differ)")
    if batch.response_mask is not None and batch.response_mask.numel():
        lengths = batch.response_mask.sum(-1)  # (B,)
        if int(lengths.max()) > max_new_tokens:
            row = int(lengths.argmax())
            problems.append(f"Batch row {row} has a {int(lengths[row])}-token response but the session's "
                            f"rollout.max_new_tokens = {max_new_tokens}")
    if problems:
        raise ValueError(f"Session.{stage}: the batch does not fit this session (was it saved by a run with "
                         f"another model or config?): " + "; ".join(problems))


def sampling_params(rollout: Any, *, n: int | None = None, greedy: bool = False):
    """The `SamplingParams` of a rollout from the config's `rollout` section: `n` samples per prompt (default
    `rollout.n`), or one greedy response (temperature 0, no minimum length: evaluation reads the model's own
    ending)."""
    from rlkit.rollout.sampling import SamplingParams

    return SamplingParams(
        n=1 if greedy else (n or rollout.n),
        temperature=0.0 if greedy else rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        max_new_tokens=rollout.max_new_tokens,
        min_new_tokens=0 if greedy else rollout.min_new_tokens,
        stop=list(rollout.stop),
    )


def require_fields(batch: Batch, fields: tuple[str, ...], stage: str, hint: str) -> None:
    missing = [f for f in fields if getattr(batch, f) is None]
    if missing:
        raise ValueError(f"Session.{stage}: the batch has no {', '.join(missing)}; {hint}")
