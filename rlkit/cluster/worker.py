"""The worker side: what one rank's process holds, whatever the backend.

A `RankHost` is the object living in one worker process (a Ray actor, or the calling
process for the local backend). It sets up `torch.distributed`, then holds one object
per role — actor, reference, critic ... — side by side (composition: colocated roles
are separate objects in one process, never one class with three roles).
"""

from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class WorkerContext:
    """Where a role object runs; passed as the first argument of every role constructor."""

    rank: int
    """Global rank in the worker group (0 .. world_size-1); rank = node_rank * devices_per_node + local_rank."""
    world_size: int
    """Number of ranks in the worker group (1 for the local backend)."""
    local_rank: int
    """Rank among the group's ranks on this node."""
    node_rank: int
    """Index of this rank's node in the resource pool."""
    device: torch.device
    """Device for this rank's tensors: `cuda:<index>` on GPU pools, else `cpu`."""
    backend: str
    """Worker-group backend: "ray" or "local"."""
    threads: int | None = None
    """torch intra-op threads set for this process (None: left as it was, local backend)."""


@dataclass
class RoleSpec:
    """One role of a worker group: the class to build on every rank and its constructor arguments."""

    cls: type
    """Role class; built as `cls(ctx, **kwargs)` on every rank. Public methods are exposed with `@register`."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the constructor (sent to every rank, so they must pickle for the ray backend)."""


@dataclass(frozen=True)
class Failure:
    """An exception captured in a worker, shipped to the driver as data (Ray's own wrapping hides the role)."""

    exc_type: str
    """Qualified class name of the exception."""
    traceback: str
    """Formatted traceback from the role method down."""
    host: str
    """Where it happened: node address and process id."""


def free_port() -> int:
    """A TCP port that is free on this node right now (for the rendezvous of rank 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def node_address() -> str:
    """This node's IP address as other nodes of the Ray cluster reach it."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # not inside Ray: the local backend
        return "127.0.0.1"


class RankHost:
    """Everything one rank's process holds: its context and one object per role."""

    def __init__(self):
        self.ctx: WorkerContext | None = None
        self.roles: dict[str, Any] = {}

    # ---- set-up -------------------------------------------------------------------------------

    def info(self) -> dict:
        """Facts the driver needs before the rendezvous."""
        import ray

        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        gpu_ids = [int(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        return {"address": node_address(), "node_id": node_id, "pid": os.getpid(), "gpu_ids": gpu_ids,
                "cores": usable_cores()}

    def free_port(self) -> int:
        return free_port()

    def setup(self, ctx: WorkerContext, init_method: str | None, dist_backend: str) -> int:
        """Set threads and device, then join the process group (all ranks concurrently).

        `init_method` None means the caller has already initialised `torch.distributed`.
        Returns the process id (the driver keeps it for error messages and tests).
        """
        if ctx.threads is not None:
            # Ray sets OMP_NUM_THREADS=1 in actors; choose the count deliberately.
            torch.set_num_threads(ctx.threads)
        if ctx.device.type == "cuda":
            torch.cuda.set_device(ctx.device)
        if init_method is not None:
            import torch.distributed as dist

            # Libraries that read the usual launcher variables see consistent values.
            host, port = init_method.removeprefix("tcp://").rsplit(":", 1)
            os.environ.update(
                MASTER_ADDR=host,
                MASTER_PORT=port,
                RANK=str(ctx.rank),
                WORLD_SIZE=str(ctx.world_size),
                LOCAL_RANK=str(ctx.local_rank),
            )
            dist.init_process_group(
                backend=dist_backend,
                init_method=init_method,
                rank=ctx.rank,
                world_size=ctx.world_size,
                device_id=ctx.device if ctx.device.type == "cuda" else None,
            )
        self.ctx = ctx
        return os.getpid()

    def construct(self, role: str, cls: type, kwargs: dict) -> None:
        """Build one role object on this rank (all ranks concurrently: constructors may use collectives)."""
        if self.ctx is None:
            raise RuntimeError("RankHost.construct called before setup")
        self.roles[role] = cls(self.ctx, **kwargs)

    def construct_captured(self, role: str, cls: type, kwargs: dict) -> Any:
        return self._captured(lambda: self.construct(role, cls, kwargs))

    # ---- calls --------------------------------------------------------------------------------

    def call(self, role: str, method: str, args: tuple, kwargs: dict) -> Any:
        """Run one role method on this rank; exceptions propagate unchanged (local backend)."""
        return getattr(self.roles[role], method)(*args, **kwargs)

    def call_captured(self, role: str, method: str, args: tuple, kwargs: dict) -> Any:
        """Run one role method; an exception comes back as a `Failure` value (ray backend)."""
        return self._captured(lambda: self._to_cpu(self.call(role, method, args, kwargs)))

    def pid(self) -> int:
        return os.getpid()

    def teardown(self) -> None:
        """Drop the role objects and leave the process group (best effort: the process is killed next)."""
        self.roles.clear()
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # ---- helpers ------------------------------------------------------------------------------

    def _captured(self, fn) -> Any:
        try:
            return fn()
        except Exception as exc:
            # Skip Ray's and this host's frames: the traceback starts at the role's own code.
            tb = start = exc.__traceback__
            while tb is not None:
                if tb.tb_frame.f_code.co_filename == __file__:
                    start = tb.tb_next
                tb = tb.tb_next
            tb = start if start is not None else exc.__traceback__
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            kind = type(exc)
            name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
            return Failure(exc_type=name, traceback=text, host=f"{node_address()}, pid {os.getpid()}")

    @staticmethod
    def _to_cpu(value: Any) -> Any:
        # Results cross process boundaries: ship CUDA tensors as CPU tensors.
        if isinstance(value, torch.Tensor) or callable(getattr(value, "unpad", None)):
            if getattr(value, "device", None) is not None and str(value.device) != "cpu":
                return value.to("cpu")
        return value
