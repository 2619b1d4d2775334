"""Process-wide vLLM state that outlives one `VLLMEngine`: its process groups and its CPU shared memory.

vLLM keeps its parallel groups in module globals and, on CPU with tensor parallelism, one shared-memory
segment per rank for its all-reduce. Several engines come and go in one of our worker processes (a
Session closed and a new one started, tests), and worker processes get killed; these helpers keep
such leftovers from breaking the next engine.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

SHM_DIR = "/dev/shm"


def shutdown_core_keeping_our_group(core: Any) -> None:
    """`EngineCore.shutdown()` without its last step, `cleanup_dist_env_and_memory()`, which destroys the
    default process group (the worker group's, still in use by the trainer)."""
    import vllm.v1.engine.core as core_module

    cleanup = core_module.cleanup_dist_env_and_memory
    core_module.cleanup_dist_env_and_memory = lambda *args, **kwargs: None
    try:
        core.shutdown()
    finally:
        core_module.cleanup_dist_env_and_memory = cleanup
    release_vllm_groups()


def release_vllm_groups() -> None:
    """Forget vLLM's process groups (module globals of `vllm.distributed.parallel_state`) so that a later engine
    in this process builds them again on the current default group.

    They are not destroyed here: a vLLM group whose device group is None would make
    `destroy_process_group(None)` destroy OUR default group. They are subgroups of the default
    group and go with it.
    """
    try:
        from vllm.distributed import parallel_state as ps
    except ImportError:
        return
    for name, value in list(vars(ps).items()):
        if isinstance(value, ps.GroupCoordinator):
            setattr(ps, name, None)


def release_stale_vllm_groups() -> None:
    """Forget vLLM's groups if they were built on a default process group that no longer exists (an engine
    collected after its worker group closed, and a new group started in this process)."""
    try:
        from vllm.distributed import parallel_state as ps
    except ImportError:
        return
    world = getattr(ps, "_WORLD", None)
    if world is None:
        return
    try:
        alive = dist.is_initialized() and world.cpu_group in dist.distributed_c10d._world.pg_map
    except Exception:  # private torch structure changed: assume stale, rebuilding is always safe
        alive = False
    if not alive:
        release_vllm_groups()


def mapped_shm_files(shm_dir: str = SHM_DIR, proc_dir: str = "/proc") -> tuple[set[str], bool]:
    """(paths under `shm_dir` that some live process maps, complete): `complete` is False when the maps of
    a process of another user could not be read, so an unlisted file may still be in use."""
    prefix = os.path.join(shm_dir, "")
    mapped: set[str] = set()
    complete = True
    for maps in glob.glob(os.path.join(proc_dir, "[0-9]*", "maps")):
        try:
            with open(maps) as fh:
                for line in fh:
                    # "address perms offset dev inode  /dev/shm/name"; a path may contain spaces
                    parts = line.split(maxsplit=5)
                    path = parts[5].rstrip("\n") if len(parts) == 6 else ""
                    if path.startswith(prefix):
                        mapped.add(path.removesuffix(" (deleted)"))
        except FileNotFoundError:  # the process ended while we looked
            continue
        except PermissionError:
            complete = False
    return mapped, complete


def remove_stale_cpu_shm(tp_rank: int, *, shm_dir: str = SHM_DIR, proc_dir: str = "/proc") -> list[str]:
    """Delete this rank's leftover vLLM CPU all-reduce segments; returns the paths removed.

    vLLM's CPU tensor-parallel all-reduce (`_CPUSHMDistributed`) has each rank r of a group create the
    segment `<ident>-<group>-[ranks]-cpushm_<r>` exclusively, and the name does not change between runs
    (with our `external_launcher` the ident is always empty). A worker that was killed never unlinks its
    segment, and the next engine on the machine then fails with "create shm in SHMManager failed.
    errno: 17" (EEXIST). A segment is stale when no live process maps it. Only this rank's own
    segments (suffix `_<tp_rank>`) are touched: the peers create theirs at the same moment, and only
    their own process may decide about them.
    """
    mapped, complete = mapped_shm_files(shm_dir, proc_dir)
    removed = []
    for path in glob.glob(os.path.join(glob.escape(shm_dir), f"*-cpushm_{tp_rank}")):
        if path in mapped:
            continue
        try:
            if not complete and Path(path).stat().st_uid != os.getuid():
                continue  # another user's, and we could not see all of their processes
            os.unlink(path)
            removed.append(path)
        except (FileNotFoundError, PermissionError):
            continue
    return removed
