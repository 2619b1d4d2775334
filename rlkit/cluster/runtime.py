"""The cluster lifecycle a Session composes: start or join Ray, free everything on close.

One `ClusterRuntime` is live per process (a module-level registry): acquiring a new one
(re-running the notebook cell that makes a Session) closes the previous one's worker
groups and pools and reuses its Ray cluster when the settings match, or shuts it down
when they do not. Nothing leaks: every pool and worker group registers itself here
when made, tagged with the runtime that was live at the time, and is closed with it.

A runtime shuts Ray down on `close()` only if it started (or inherited) that Ray
connection; a Ray already running in the process (`ray.init` by the user, a test
fixture) is joined and left running.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import weakref
from typing import Any

# The live runtime (a Session's, or the implicit one `ensure_ray` makes); None when none is live.
_LIVE: "ClusterRuntime | None" = None
# Every pool and worker group made in this process -> the runtime live when it was made (or None).
_TRACKED: "weakref.WeakKeyDictionary[Any, ClusterRuntime | None]" = weakref.WeakKeyDictionary()


def track(obj: Any) -> None:
    """Register a pool or worker group so that closing its runtime closes it too."""
    _TRACKED[obj] = _LIVE


def live() -> "ClusterRuntime | None":
    """The live runtime of this process, if any."""
    return _LIVE if _LIVE is not None and not _LIVE.closed else None


def ensure_ray() -> None:
    """Make sure Ray is running: a Ray-backend worker group made without a Session starts a default one."""
    import ray

    if not ray.is_initialized():
        ClusterRuntime.acquire(backend="ray")


def default_num_cpus() -> int:
    """Logical CPU slots of a local Ray cluster: at least 8, so several 1-CPU workers fit on a laptop or CI box.

    Logical slots only decide how many actors Ray places; each worker's torch thread count
    is set separately (`threads_per_worker`), so over-subscribing slots does not
    over-subscribe cores unless asked to.
    """
    return max(os.cpu_count() or 1, 8)


def _same_address(asked: str, current: str) -> bool:
    # "ray://host:10001" (Ray client) and "host:6379" forms: compare what follows the scheme.
    return asked.split("://")[-1] == current.split("://")[-1]


def _short_temp_dir() -> str:
    # Ray puts unix sockets under its temp dir: keep the path short (sockets are limited to ~107 bytes).
    base = tempfile.gettempdir()
    if len(base) > 40:
        base = "/tmp"
    return os.path.join(base, f"rlkit-ray-{os.getpid()}")


class ClusterRuntime:
    """Ray (or no Ray, for the local backend) for one Session; `close()` frees what it made."""

    def __init__(
        self,
        backend: str = "ray",
        address: str | None = None,
        num_cpus: int | None = None,
        *,
        cluster: Any = None,
    ):
        if backend not in ("ray", "local"):
            raise ValueError(f"cluster.backend must be 'ray' or 'local', got {backend!r}")
        if num_cpus is not None and (not isinstance(num_cpus, int) or num_cpus < 1):
            raise ValueError(f"num_cpus must be a positive int, got {num_cpus!r}")
        self.backend = backend
        """"ray" or "local" (the local backend never starts Ray)."""
        self.address = None if address in (None, "", "local") else address
        """Ray address asked for: None starts a local cluster (or joins the one this process already has)."""
        self.num_cpus = num_cpus
        """Logical CPUs of a locally started cluster (None: `default_num_cpus()`)."""
        self.cluster = cluster
        """The config's `cluster` section (defaults for `make_pool` / `make_group`), or None."""
        self.owns_ray = False
        """True when `close()` must shut Ray down (this runtime started it, or inherited it)."""
        self.temp_dir: str | None = None
        """Ray's session folder when this runtime started a local cluster."""
        self.closed = False
        self.started = False

    # ---- lifecycle ----------------------------------------------------------------------------

    @classmethod
    def acquire(cls, backend: str = "ray", address: str | None = None, num_cpus: int | None = None, *,
                cluster: Any = None) -> "ClusterRuntime":
        """Start the process's live runtime, closing (or reusing the Ray of) the previous one."""
        global _LIVE
        rt = cls(backend, address, num_cpus, cluster=cluster)
        prev = live()
        if prev is not None:
            if prev.can_serve(rt):
                # Same cluster wanted: free the previous runtime's workers, keep Ray (saves its start-up).
                if prev.owns_ray:
                    rt._take_ray(prev.temp_dir)
                    prev.owns_ray = False
            prev.close()
        rt.start()
        _LIVE = rt
        return rt

    def can_serve(self, other: "ClusterRuntime") -> bool:
        """Whether `other`'s request is met by this runtime's Ray cluster."""
        import ray

        if self.backend != "ray" or other.backend != "ray" or not ray.is_initialized():
            return False
        if other.address not in (None, "auto") and other.address != self.address:
            return False
        if other.address is None and self.address is not None:
            return False
        if other.num_cpus is not None and self.address is None:
            return int(ray.cluster_resources().get("CPU", 0)) == other.num_cpus
        return True

    def start(self) -> "ClusterRuntime":
        """Start a local Ray cluster, join `address`, or reuse the Ray this process already runs."""
        if self.started:
            return self
        self.started = True
        if self.backend == "local":
            return self
        import ray

        if ray.is_initialized():
            current = ray.get_runtime_context().gcs_address
            if self.address not in (None, "auto") and not self.owns_ray and not _same_address(self.address, current):
                raise RuntimeError(
                    f"this process is already connected to Ray at {current} (started outside rlkit); "
                    f"call ray.shutdown() before joining {self.address!r}"
                )
            return self  # joined: ownership is whatever acquire() handed over
        if self.address is not None:
            ray.init(address=self.address, log_to_driver=True)
            self._take_ray(None)  # our driver connection (the cluster itself stays up)
            return self
        # A throwaway local cluster: no token auth (it would write a token under ~/.ray), no
        # dashboard (its own processes and port), session files in a short private folder.
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        temp_dir = _short_temp_dir()
        for attempt in range(3):
            try:
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus or default_num_cpus(),
                    include_dashboard=False,
                    _temp_dir=temp_dir,
                    log_to_driver=True,
                )
                break
            except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for this
                # Ray waits a fixed 30 s for its raylet; on a loaded small machine that can pass.
                # Start again from scratch rather than fail the Session.
                if "timed out during startup" not in str(err) or attempt == 2:
                    raise
                ray.shutdown()
        self._take_ray(temp_dir)
        return self

    def _take_ray(self, temp_dir: str | None) -> None:
        """Become responsible for shutting Ray down (and removing its session folder)."""
        self.owns_ray, self.temp_dir = True, temp_dir
        # Ray shuts itself down at exit; closing first also frees our workers in order and removes
        # the session folder (registered after ray.init, so it runs before Ray's own exit hook).
        atexit.register(self.close)

    def close(self) -> None:
        """Close this runtime's worker groups and pools; shut Ray down if this runtime owns it (idempotent)."""
        global _LIVE
        if self.closed:
            return
        self.closed = True
        if _LIVE is self:
            _LIVE = None
        # Everything dies with Ray, but close what we own explicitly so pools/groups know it.
        from rlkit.cluster.group import WorkerGroup

        owned = [obj for obj, owner in list(_TRACKED.items()) if self.owns_ray or owner is self]
        for obj in sorted(owned, key=lambda o: 0 if isinstance(o, WorkerGroup) else 1):  # groups before pools
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - best effort, the process is going away
                pass
        if self.owns_ray:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            self.owns_ray = False
            if self.temp_dir:
                shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "ClusterRuntime":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("started" if self.started else "new")
        where = self.address or ("local cluster" if self.backend == "ray" else "in-process")
        return f"<ClusterRuntime backend={self.backend!r} {where} {state}>"

    # ---- helpers for the Session: pools and groups from the config's cluster section ----------

    def make_pool(self, **overrides):
        """A `ResourcePool` from the config's cluster section (nodes, devices_per_node, device), with overrides."""
        from rlkit.cluster.pool import ResourcePool

        fields = {name: getattr(self.cluster, name) for name in ("nodes", "devices_per_node", "device")
                  if self.cluster is not None and getattr(self.cluster, name, None) is not None}
        fields.update(overrides)
        return ResourcePool(**fields)

    def make_group(self, roles: dict, pool=None, *, name: str = ""):
        """A `WorkerGroup` with this runtime's backend and the config's `threads_per_worker`."""
        from rlkit.cluster.group import WorkerGroup

        threads = getattr(self.cluster, "threads_per_worker", None) if self.cluster is not None else None
        return WorkerGroup(pool if pool is not None else self.make_pool(), roles, backend=self.backend,
                           threads_per_worker=threads, name=name)
