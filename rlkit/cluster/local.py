"""The local backend: the same role classes as objects in the calling process, world size 1.

Nothing crosses a process boundary, so `breakpoint()` inside worker code stops in the
notebook or terminal, and an exception keeps its own type and traceback (`%debug` lands
in the worker frame); a note names the role and rank. Arguments are passed by reference,
not copied: a role that mutates its input mutates the driver's object.
"""

from __future__ import annotations

import os

import torch

from rlkit.cluster.futures import LocalFuture, WorkerFuture
from rlkit.cluster.pool import ResourcePool
from rlkit.cluster.worker import RankHost, RoleSpec, WorkerContext

# torch.distributed can be initialised once per process: local groups share one
# single-rank process group, made by the first and destroyed with the last.
_dist_users = 0
_dist_owned = False


def _acquire_dist(device: torch.device) -> None:
    global _dist_users, _dist_owned
    import torch.distributed as dist

    if dist.is_initialized():
        if dist.get_world_size() != 1:
            raise RuntimeError(
                f"local backend: torch.distributed is already initialised in this process with world size "
                f"{dist.get_world_size()}; the local backend needs world size 1 (use the ray backend inside "
                f"a distributed job)"
            )
    else:
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
        _dist_owned = True
    _dist_users += 1


def _release_dist() -> None:
    global _dist_users, _dist_owned
    import torch.distributed as dist

    _dist_users = max(0, _dist_users - 1)
    if _dist_users == 0 and _dist_owned and dist.is_initialized():
        dist.destroy_process_group()
        _dist_owned = False


def _add_note(exc: BaseException, note: str) -> None:
    # Keep the worker's own exception (so %debug lands in its frame) and say where it came from.
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)


def local_device(pool: ResourcePool | None) -> torch.device:
    """cuda:0 when the pool asks for CUDA (or "auto" and CUDA is available here), else cpu."""
    kind = pool.device if pool is not None else "auto"
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", 0)
    return torch.device("cpu")


class LocalBackend:
    """One `RankHost` in this process; calls run synchronously at `submit` time."""

    name = "local"

    def __init__(self, pool: ResourcePool | None, threads_per_worker: int | None, label: str):
        self.pool = pool
        self.label = label
        self.world_size = 1
        self.threads = threads_per_worker
        self.host: RankHost | None = None
        self.pids: list[int] = []
        self.role_names: list[str] = []

    def start(self, roles: dict[str, RoleSpec]) -> None:
        device = local_device(self.pool)
        ctx = WorkerContext(rank=0, world_size=1, local_rank=0, node_rank=0, device=device, backend="local",
                            threads=self.threads)
        _acquire_dist(device)
        self.host = RankHost()
        self.role_names = list(roles)
        try:
            self.host.setup(ctx, init_method=None, dist_backend="")
            for role, spec in roles.items():
                try:
                    self.host.construct(role, spec.cls, spec.kwargs)
                except Exception as exc:
                    _add_note(exc, f"rlkit: raised while building role {role!r} ({spec.cls.__qualname__}) "
                                   f"on rank 0 of 1 (local backend, {self.label})")
                    raise
        except BaseException:
            self.close()
            raise
        self.pids = [os.getpid()]

    def disconnected(self) -> bool:
        """Never: the roles live in this process, whatever happens to Ray."""
        return False

    def submit(self, role: str, method: str, calls: list[tuple[tuple, dict]], finish) -> WorkerFuture:
        if self.host is None:
            raise RuntimeError(f"{self.label} is closed")
        (args, kwargs), = calls
        try:
            value = self.host.call(role, method, args, kwargs)
        except Exception as exc:
            _add_note(exc, f"rlkit: raised in {role}.{method} on rank 0 of 1 (local backend, {self.label})")
            return LocalFuture(error=exc)
        try:
            return LocalFuture(value=finish([value]), raw=[value])
        except Exception as exc:
            return LocalFuture(error=exc)

    def close(self) -> None:
        if self.host is not None:
            self.host.roles.clear()
            self.host = None
            _release_dist()
