"""Errors that reach the driver from a worker group; each names the role, the rank and the call."""

from __future__ import annotations


class ClusterError(RuntimeError):
    """Base class of the errors raised by `rlkit.cluster`."""


class WorkerError(ClusterError):
    """A role method raised an exception inside a worker process.

    The message carries the worker's own traceback text, so it reads like the error a
    single-process run would have shown.
    """

    def __init__(self, role: str, method: str, rank: int, world_size: int, exc_type: str, traceback: str, host: str):
        self.role = role
        """Name of the role whose method failed (`"actor"`)."""
        self.method = method
        """Name of the method that failed (`"compute_logprobs"`)."""
        self.rank = rank
        """Rank of the worker that raised."""
        self.world_size = world_size
        """Number of ranks in the worker group."""
        self.exc_type = exc_type
        """Qualified name of the exception class raised in the worker (`"ValueError"`)."""
        self.traceback = traceback
        """The worker's formatted traceback."""
        super().__init__(
            f"{role}.{method} raised {exc_type} on rank {rank} of {world_size} ({host}).\n"
            f"Worker traceback (rank {rank}):\n{traceback.rstrip()}"
        )


class WorkerDiedError(ClusterError):
    """A worker process died (killed, out of memory, crashed) or was unreachable."""

    def __init__(self, role: str, method: str | None, rank: int, world_size: int, roles: list[str], cause: str):
        self.role = role
        """Role whose call found the worker dead."""
        self.method = method
        """Method being called, or None if the death was found outside a call."""
        self.rank = rank
        """Rank of the dead worker."""
        self.world_size = world_size
        """Number of ranks in the worker group."""
        during = f" during {role}.{method}" if method else ""
        super().__init__(
            f"The worker process of rank {rank} of {world_size} (role {role!r}; the process hosted roles "
            f"{', '.join(roles)}) died{during}. The worker group is unusable: close() it and create a new one.\n"
            f"Cause reported by Ray: {cause}"
        )
