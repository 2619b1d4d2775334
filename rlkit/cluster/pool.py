"""Resource pools: `nodes` x `devices_per_node` device slots, backed by Ray placement groups.

One placement group per node, STRICT_PACK (all of a node's bundles on one machine), and
the node groups on distinct machines: the k-th group is created with a label selector
that excludes the nodes already taken. On a CPU-only cluster a "device" is a slot of
`cpus_per_device` CPUs; on a GPU cluster it is one GPU plus those CPUs.

Placement is lazy: the placement groups are made when a Ray-backend worker group first
needs them, so a pool can be described before Ray runs (and the local backend never
touches Ray).

Freeing: `close()` (or the `ClusterRuntime` whose `make_pool` made it) removes the
placement groups; a pool dropped without `close()` removes them when it is garbage
collected; and placement groups of a Ray connection that has since ended (Ray shut
down, or restarted by a new Session) are forgotten, so the pool can host a group on
the new cluster.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Literal

DeviceKind = Literal["auto", "cpu", "cuda"]

# Ray's built-in label that every node carries: its node id.
_NODE_ID_LABEL = "ray.io/node-id"


@dataclass(eq=False)
class ResourcePool:
    """A set of device slots for one worker group (several colocated roles share it)."""

    nodes: int = 1
    """Number of nodes (machines) the pool spans; each gets its own placement group."""
    devices_per_node: int = 1
    """Device slots per node; ranks on a node are local ranks 0 .. devices_per_node-1."""
    device: DeviceKind = "auto"
    """"cuda" (one GPU per slot), "cpu", or "auto" (cuda when the cluster has GPUs)."""
    cpus_per_device: float = 1.0
    """Logical Ray CPUs reserved per slot (scheduling only: torch threads are `threads_per_worker`)."""
    name: str = ""
    """Optional label used in placement group names and error messages."""
    placement_timeout_s: float = 60.0
    """How long to wait for Ray to place a node's group before failing with the cluster's free resources."""

    _groups: list = field(default_factory=list, init=False, repr=False)
    _node_ids: list = field(default_factory=list, init=False, repr=False)
    _device: str | None = field(default=None, init=False, repr=False)
    _user: object = field(default=None, init=False, repr=False)
    _connection: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        for name in ("nodes", "devices_per_node"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ResourcePool.{name} must be a positive int, got {value!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"ResourcePool.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if not self.cpus_per_device > 0:
            raise ValueError(f"ResourcePool.cpus_per_device must be > 0, got {self.cpus_per_device!r}")
        # A dropped pool frees its placement groups (Ray keeps them until the job ends otherwise). Not at
        # exit: Ray's own shutdown removes them then.
        self._finalizer = weakref.finalize(self, _remove_quietly, self._groups)
        self._finalizer.atexit = False

    @property
    def world_size(self) -> int:
        """Number of device slots, i.e. ranks of a worker group on this pool."""
        return self.nodes * self.devices_per_node

    @property
    def label(self) -> str:
        return self.name or f"pool({self.nodes}x{self.devices_per_node})"

    # ---- placement (ray backend) --------------------------------------------------------------

    def resolved_device(self) -> str:
        """"cpu" or "cuda" for the Ray backend ("auto" looks at the cluster's GPUs)."""
        if self._device is None:
            if self.device == "auto":
                import ray

                self._device = "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
            else:
                self._device = self.device
        return self._device

    def bundle(self) -> dict[str, float]:
        """Resources of one device slot."""
        b = {"CPU": float(self.cpus_per_device)}
        if self.resolved_device() == "cuda":
            b["GPU"] = 1.0
        return b

    def placement_groups(self) -> list:
        """The pool's placement groups, one per node in node-rank order (created on first use)."""
        self._forget_if_gone()
        if self._groups:
            return self._groups
        import ray
        from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

        if not ray.is_initialized():
            raise RuntimeError(f"{self.label}: Ray is not running; start an rlkit.Session (or ray.init) first")
        bundles = [self.bundle() for _ in range(self.devices_per_node)]
        self._connection = _current_connection()
        try:
            for node_rank in range(self.nodes):
                selector = {}
                if self._node_ids:
                    # Distinct machines: exclude the nodes already holding one of this pool's groups.
                    selector = {_NODE_ID_LABEL: f"!in({', '.join(self._node_ids)})"}
                pg = placement_group(
                    bundles,
                    strategy="STRICT_PACK",
                    name=f"rlkit-{self.label}-node{node_rank}-{id(self):x}",
                    bundle_label_selector=[selector] * len(bundles) if selector else None,
                )
                self._groups.append(pg)
                if not pg.wait(timeout_seconds=self.placement_timeout_s):
                    raise RuntimeError(
                        f"{self.label}: Ray could not place node {node_rank} of {self.nodes} "
                        f"({self.devices_per_node} x {bundles[0]} on one node, on a node not yet used by the pool) "
                        f"within {self.placement_timeout_s:.0f} s. Free resources per node: {_free_per_node()}. "
                        f"Lower the pool size or cpus_per_device, or start Ray with more num_cpus."
                    )
                table = placement_group_table(pg)
                self._node_ids.append(table["bundles_to_node_id"][0])
        except BaseException:
            for pg in self._groups:
                remove_placement_group(pg)
            self._groups.clear()
            self._node_ids.clear()
            raise
        return self._groups

    @property
    def node_ids(self) -> list[str]:
        """Ray node id of each node rank (after placement on the current Ray connection)."""
        self._forget_if_gone()
        return list(self._node_ids)

    def close(self) -> None:
        """Release the placement groups (worker groups on the pool must be closed first)."""
        self._forget_if_gone()
        try:
            _remove_groups(self._groups)
        finally:
            self._forget()

    def _forget(self) -> None:
        self._groups.clear()
        self._node_ids.clear()
        self._user = None
        self._device = None
        self._connection = None

    def _forget_if_gone(self) -> None:
        """Drop placement (and the hosting group) made on a Ray connection that has ended: they died with it."""
        if self._groups and self._connection != _current_connection():
            self._forget()

    # ---- bookkeeping --------------------------------------------------------------------------

    def claim(self, user: object, what: str) -> None:
        """One live worker group per pool: colocated roles go into the SAME group (one process per slot)."""
        self._forget_if_gone()
        if self._user is not None and self._user is not user:
            raise RuntimeError(
                f"{self.label} already hosts a live worker group; put colocated roles in one WorkerGroup "
                f"(one process per device holds them all) or give {what} its own ResourcePool"
            )
        self._user = user

    def release(self, user: object) -> None:
        if self._user is user:
            self._user = None


def _current_connection() -> tuple | None:
    from rlkit.cluster.runtime import ray_connection

    return ray_connection()


def _remove_groups(groups: list) -> None:
    """Remove placement groups on the live connection (a pool's close, or its finalizer; idempotent)."""
    if not groups:
        return
    try:
        import ray
        from ray.util.placement_group import remove_placement_group

        if ray.is_initialized():
            for pg in groups:
                remove_placement_group(pg)
    finally:
        groups.clear()


def _remove_quietly(groups: list) -> None:
    # The finalizer of a dropped pool: nobody is there to hear an error (e.g. a connection since replaced).
    try:
        _remove_groups(groups)
    except Exception:  # noqa: BLE001
        pass


def _free_per_node() -> str:
    """A short description of the free resources of every alive node, for placement errors."""
    try:
        import ray

        per_node = ray._private.state.available_resources_per_node()
        alive = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
        parts = []
        for node_id, res in per_node.items():
            if node_id in alive:
                shown = {k: v for k, v in res.items() if k in ("CPU", "GPU")}
                parts.append(f"{node_id[:8]}: {shown}")
        return "; ".join(parts) or "none"
    except Exception as exc:  # diagnostics only
        return f"(unavailable: {exc})"
