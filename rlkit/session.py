"""`rlkit.Session`: the notebook's handle on a run.

For now only the lifecycle lives here: start or join Ray (through a `ClusterRuntime`),
free every process on `close()` or at the end of a `with` block, and make sure that
re-running the cell that creates a Session never leaks the previous one's processes.
The RL stages (generate / prepare / learn ...) are added on top of this.
"""

from __future__ import annotations

from typing import Any

from rlkit.cluster.runtime import ClusterRuntime


class Session:
    """Owns the cluster (and, later, the worker groups, data and algorithm) of one run.

    ```python
    s = rlkit.Session(cfg)                    # local Ray cluster (or the one this process has)
    s = rlkit.Session(cfg, address="auto")    # join a running cluster
    s = rlkit.Session(cfg, backend="local")   # no Ray: workers in this process, breakpoint() works
    s.close()                                 # or: with rlkit.Session(cfg) as s: ...
    ```
    Creating a Session closes the previous live one (reusing its Ray cluster when the
    settings match), so re-running a cell never leaks worker processes.
    """

    def __init__(self, config: Any | None = None, *, address: str | None = None, num_cpus: int | None = None,
                 backend: str | None = None):
        cluster = getattr(config, "cluster", None)
        self.config = config
        """The run's `rlkit.Config` (None: cluster defaults only)."""
        self.backend: str = backend or getattr(cluster, "backend", None) or "ray"
        """"ray" or "local"."""
        address = address if address is not None else (getattr(cluster, "address", None) or None)
        num_cpus = num_cpus if num_cpus is not None else getattr(cluster, "num_cpus", None)
        self.runtime = ClusterRuntime.acquire(self.backend, address, num_cpus, cluster=cluster)
        """The cluster lifecycle: Ray start/join/shutdown, and every pool and worker group made under it."""

    @property
    def closed(self) -> bool:
        """True once `close()` ran, or once a newer Session replaced this one."""
        return self.runtime.closed

    def close(self) -> None:
        """Stop every worker process of this Session, and the Ray cluster if the Session started it."""
        self.runtime.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<rlkit.Session backend={self.backend!r} {'closed' if self.closed else 'live'}>"
