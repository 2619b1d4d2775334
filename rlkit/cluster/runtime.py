"""The cluster lifecycle a Session composes: start or join Ray, free what it made on close.

Ownership: a runtime records the pools and worker groups it creates itself
(`make_pool` / `make_group`, in `rt.pools` / `rt.groups`) and `close()` closes exactly
those, groups before pools. A pool or group built directly (`WorkerGroup(pool, roles)`)
belongs to the code that built it: close it yourself (`with WorkerGroup(...) as g:`),
or let Ray's end take it. Its workers die with the Ray connection they ran on: a runtime
that owns Ray shuts it down on close (and at exit, for the implicit runtime that
`ensure_ray` starts), and a group or pool outliving its connection notices
(`ray_connection()`): the group reads as closed and the pool is free for a new group.

One `ClusterRuntime` is live per process, because a process has one Ray connection:
acquiring a new one (re-running the notebook cell that makes a Session) closes the
previous one's groups and pools and reuses its Ray cluster when the settings match, or
shuts it down when they do not.

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
from functools import partial
from typing import Any

# The process's Ray connection as rlkit holds it: the runtime of the latest Session (or the implicit one
# `ensure_ray` makes), which the next `acquire` replaces. It tags nothing; each runtime keeps its own objects.
_LIVE: "ClusterRuntime | None" = None

REPLACED = ("this rlkit.Session was replaced by a newer rlkit.Session (creating a Session closes the previous "
            "one's workers; one Session is live per process): use the newer Session")
"""The close reason `acquire` gives the runtime it replaces (what a later call on its groups says)."""


def live() -> "ClusterRuntime | None":
    """The live runtime of this process, if any."""
    return _LIVE if _LIVE is not None and not _LIVE.closed else None


def ray_connection() -> tuple | None:
    """Identity of this process's current Ray connection (None when Ray is not running here).

    Placement groups and actors belong to the connection that made them and die with it; a pool or
    group compares this with what it recorded at start to tell a live connection from a later one
    (a restarted local cluster has a new node id, a re-joined remote one a new job id)."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        ctx = ray.get_runtime_context()
        return (ctx.get_node_id(), ctx.get_job_id())
    except Exception:  # noqa: BLE001 - e.g. a Ray client without these: cannot tell, assume the same
        return ("connected",)


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
        self.closed_reason: str | None = None
        """Why `close()` ran, when its caller said (`REPLACED` when a newer Session's runtime took over)."""
        self.started = False
        # What make_pool / make_group made, oldest first. Weak: a group or pool the caller dropped is freed
        # by the garbage collector (Ray kills actors whose handles are gone; a pool removes its placement
        # groups), not kept alive until close().
        self._made: list[weakref.ref] = []

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
            prev.close(reason=REPLACED)
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

    def close(self, reason: str | None = None) -> None:
        """Close this runtime's worker groups and pools; shut Ray down if this runtime owns it (idempotent).
        `reason`: why, recorded here and in each group, so a later call on them says it (`REPLACED`: a newer
        Session's `acquire`; `Session.close` gives its own)."""
        global _LIVE
        if self.closed:
            return
        self.closed = True
        self.closed_reason = reason
        if _LIVE is self:
            _LIVE = None
        # Ray's shutdown would kill them anyway, but closing first stops the workers in order, marks the
        # groups closed and releases the placement groups of a cluster that stays up (a joined one).
        closers = [partial(g.close, reason=reason) for g in self.groups] + [p.close for p in self.pools]
        for close in closers:  # groups before pools: a pool outlives its group's workers
            try:
                close()
            except Exception:  # noqa: BLE001 - best effort: free the rest
                pass
        self._made = []
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

    # ---- what this runtime made (and frees on close) ------------------------------------------

    @property
    def groups(self) -> list:
        """The worker groups `make_group` made that are still open, oldest first: what `close()` stops."""
        from rlkit.cluster.group import WorkerGroup

        return [g for g in self._alive() if isinstance(g, WorkerGroup) and not g.closed]

    @property
    def pools(self) -> list:
        """The resource pools `make_pool` made, oldest first: `close()` releases their placement groups."""
        from rlkit.cluster.pool import ResourcePool

        return [p for p in self._alive() if isinstance(p, ResourcePool)]

    def _alive(self) -> list:
        objs = [ref() for ref in self._made]
        self._made = [ref for ref, obj in zip(self._made, objs) if obj is not None]
        return [obj for obj in objs if obj is not None]

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self!r}: cannot make pools or groups on a closed runtime (a newer Session "
                               f"replaces the previous one); use the live Session's runtime")

    # ---- pools and groups from the config's cluster section ------------------------------------

    def make_pool(self, **overrides):
        """A `ResourcePool` from the config's cluster section (nodes, devices_per_node, device), with
        overrides; recorded here, so `close()` releases its placement groups."""
        from rlkit.cluster.pool import ResourcePool

        fields = {name: getattr(self.cluster, name) for name in ("nodes", "devices_per_node", "device")
                  if self.cluster is not None and getattr(self.cluster, name, None) is not None}
        fields.update(overrides)
        self._check_open()
        pool = ResourcePool(**fields)
        self._made.append(weakref.ref(pool))
        return pool

    def make_group(self, roles: dict, pool=None, *, name: str = ""):
        """A `WorkerGroup` with this runtime's backend and the config's `threads_per_worker`, on `pool`
        (default: a new `make_pool()`); recorded here, so `close()` stops its workers. A pool passed in
        stays its maker's: closing the group only releases it for the next group."""
        from rlkit.cluster.group import WorkerGroup

        self._check_open()
        threads = getattr(self.cluster, "threads_per_worker", None) if self.cluster is not None else None
        group = WorkerGroup(pool if pool is not None else self.make_pool(), roles, backend=self.backend,
                            threads_per_worker=threads, name=name)
        self._made.append(weakref.ref(group))
        return group
