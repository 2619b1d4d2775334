"""Worker groups: one process per rank hosting every role, methods exposed with their protocol.

```python
group = WorkerGroup(pool, {"actor": RoleSpec(Policy, kwargs={...}), "ref": RoleSpec(Reference)})
out = group.actor.compute_logprobs(batch)            # blocking
fut = group.ref.compute_logprobs.submit(batch)       # non-blocking: a WorkerFuture
out = fut.result()
```

The driver never runs role code itself (except with the local backend, where the
"worker" is an object in this process): `group.<role>.<method>(...)` dispatches the
arguments with the method's protocol, runs the method on every rank, and collects.
"""

from __future__ import annotations

import keyword
from typing import Any, Literal

from rlkit.cluster.futures import WorkerFuture
from rlkit.cluster.pool import ResourcePool
from rlkit.cluster.protocols import collect, dispatch, registered_methods
from rlkit.cluster.worker import RoleSpec

Backend = Literal["ray", "local"]
BACKENDS: tuple[str, ...] = ("ray", "local")


class MethodHandle:
    """`group.<role>.<method>`: call it to block for the result, or `.submit(...)` for a future."""

    def __init__(self, group: "WorkerGroup", role: str, method: str, protocol: str, doc: str | None):
        self._group, self.role, self.method, self.protocol = group, role, method, protocol
        self.__doc__ = doc

    def submit(self, *args, **kwargs) -> WorkerFuture:
        """Start the call on every rank and return at once; `.result()` waits and collects."""
        return self._group._submit(self.role, self.method, self.protocol, args, kwargs)

    def __call__(self, *args, **kwargs) -> Any:
        return self.submit(*args, **kwargs).result()

    def __repr__(self) -> str:
        return f"<{self.role}.{self.method} protocol={self.protocol!r} on {self._group.label}>"


class RoleHandle:
    """`group.<role>`: the role's registered methods as attributes."""

    def __init__(self, group: "WorkerGroup", role: str, spec: RoleSpec):
        self._group, self.role, self.cls = group, role, spec.cls
        self.methods = registered_methods(spec.cls)
        """`{method name: protocol}` of the role class."""
        if not self.methods:
            raise TypeError(
                f"role {role!r}: {spec.cls.__qualname__} has no method decorated with "
                f"@register('split' | 'broadcast' | 'rank0'); nothing could be called on it"
            )

    def __getattr__(self, name: str) -> MethodHandle:
        methods = self.__dict__.get("methods", {})
        if name not in methods:
            raise AttributeError(
                f"role {self.role!r} ({self.cls.__qualname__}) has no registered method {name!r}; registered: "
                f"{', '.join(sorted(methods))} (a public method needs @register(...) to be called from the driver)"
            )
        doc = getattr(getattr(self.cls, name), "__doc__", None)
        return MethodHandle(self._group, self.role, name, methods[name], doc)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.methods))

    def __repr__(self) -> str:
        return f"<role {self.role!r} ({self.cls.__qualname__}) methods={sorted(self.methods)}>"


class WorkerGroup:
    """Ranks of a resource pool, each one process holding one object per role (colocated roles).

    `backend="ray"` (default): one Ray actor per device slot of `pool`, ranks joined in
    `torch.distributed`. `backend="local"`: the roles are objects in this process, world
    size 1 whatever the pool says, so `breakpoint()` works in worker code. The same role
    classes run on both.

    `threads_per_worker`: torch intra-op threads of each rank's process; None gives each
    rank its node's cores divided by `devices_per_node` (ray), or leaves this process's
    setting alone (local).

    A group built here is its builder's to close (`close()`, or `with WorkerGroup(...)`);
    one made by `ClusterRuntime.make_group` (a Session's) is closed with that runtime.
    Either way its Ray workers end with the Ray connection they run on.
    """

    def __init__(
        self,
        pool: ResourcePool | None,
        roles: dict[str, RoleSpec],
        backend: Backend = "ray",
        *,
        threads_per_worker: int | None = None,
        name: str = "",
    ):
        if backend not in BACKENDS:
            raise ValueError(f"WorkerGroup(backend={backend!r}): backend must be one of {', '.join(BACKENDS)}")
        if not roles:
            raise ValueError("WorkerGroup(roles={}): give at least one role, e.g. {'actor': RoleSpec(Policy)}")
        if pool is None and backend == "ray":
            raise ValueError("WorkerGroup(pool=None): the ray backend needs a ResourcePool")
        for role, spec in roles.items():
            _check_role(role, spec)
        self.pool = pool
        self.backend = backend
        self.name = name
        self._handles = {role: RoleHandle(self, role, spec) for role, spec in roles.items()}
        self._impl = None
        self._closed = False
        self.closed_reason: str | None = None
        """Why the group was closed, when its closer said (a newer Session replaced this one's ...)."""
        label = self.label
        if backend == "ray":
            from rlkit.cluster import runtime

            runtime.ensure_ray()
            from rlkit.cluster.ray_backend import RayBackend

            impl = RayBackend(pool, threads_per_worker, label)
        else:
            from rlkit.cluster.local import LocalBackend

            impl = LocalBackend(pool, threads_per_worker, label)
        if pool is not None and backend == "ray":
            pool.claim(self, f"group {label}")
        try:
            impl.start(roles)
        except BaseException:
            impl.close()
            if pool is not None:
                pool.release(self)
            raise
        self._impl = impl

    # ---- public -------------------------------------------------------------------------------

    @property
    def world_size(self) -> int:
        """Number of ranks (1 with the local backend)."""
        return self._impl.world_size

    @property
    def roles(self) -> list[str]:
        """Role names in construction order."""
        return list(self._handles)

    @property
    def pids(self) -> list[int]:
        """Process id of each rank (all equal to this process's with the local backend)."""
        return list(self._impl.pids)

    @property
    def node_ids(self) -> list[str | None]:
        """Ray node id of each rank (None with the local backend)."""
        return list(getattr(self._impl, "node_ids", [None]))

    @property
    def label(self) -> str:
        roles = "+".join(self._handles)
        return self.name or f"WorkerGroup[{roles}]"

    @property
    def closed(self) -> bool:
        """True after `close()`, or once the Ray connection its workers ran on has ended (they died with it)."""
        return self._closed or (self._impl is not None and self._impl.disconnected())

    def close(self, reason: str | None = None) -> None:
        """Stop every worker process of the group (idempotent). The pool stays and can host a new group.
        `reason`: why, for the error a later call gets (`ClusterRuntime.close` passes the Session's)."""
        if self._closed:
            return
        self._closed = True
        self.closed_reason = reason
        try:
            if self._impl is not None:
                self._impl.close()
        finally:
            if self.pool is not None:
                self.pool.release(self)

    def __getattr__(self, name: str) -> RoleHandle:
        handles = self.__dict__.get("_handles", {})
        if name in handles:
            return handles[name]
        raise AttributeError(f"{self.__dict__.get('name') or 'WorkerGroup'} has no role {name!r}; roles: "
                             f"{', '.join(handles)}")

    def __getitem__(self, role: str) -> RoleHandle:
        return self.__getattr__(role)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._handles))

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"world_size={self._impl.world_size}"
        return f"<{self.label} backend={self.backend!r} {state}>"

    # ---- internal -----------------------------------------------------------------------------

    def _submit(self, role: str, method: str, protocol: str, args: tuple, kwargs: dict) -> WorkerFuture:
        if self._closed:
            if self.closed_reason:
                raise RuntimeError(f"{self.label} is closed: {self.closed_reason}")
            raise RuntimeError(f"{self.label} is closed; create a new WorkerGroup")
        where = f"{role}.{method}"
        calls, plan = dispatch(protocol, args, kwargs, self._impl.world_size, where)
        return self._impl.submit(role, method, calls, lambda results: collect(protocol, results, plan, where))


_RESERVED = set(dir(WorkerGroup))


def _check_role(role: str, spec: RoleSpec) -> None:
    if not isinstance(spec, RoleSpec):
        raise TypeError(f"role {role!r}: expected RoleSpec(cls, kwargs={{...}}), got {type(spec).__name__}")
    if not isinstance(spec.cls, type):
        raise TypeError(f"role {role!r}: RoleSpec.cls must be a class, got {spec.cls!r}")
    if not role.isidentifier() or keyword.iskeyword(role) or role.startswith("_") or role in _RESERVED:
        raise ValueError(
            f"role name {role!r} cannot be an attribute of the group (group.{role}.method): use a Python "
            f"identifier that does not start with '_' and is not one of {', '.join(sorted(n for n in _RESERVED if not n.startswith('_')))}"
        )
