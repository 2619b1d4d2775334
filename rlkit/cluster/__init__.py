"""The single controller: resource pools, worker groups, transfer protocols, two backends.

```python
from rlkit.cluster import ResourcePool, WorkerGroup, RoleSpec, WorkerContext, register

class Echo:
    def __init__(self, ctx: WorkerContext, scale: float = 1.0):
        self.ctx, self.scale = ctx, scale

    @register("split")
    def double(self, batch): ...

pool = ResourcePool(nodes=1, devices_per_node=2)
group = WorkerGroup(pool, {"echo": RoleSpec(Echo, kwargs={"scale": 2.0})})   # backend="ray" | "local"
out = group.echo.double(batch)
```
"""

from rlkit.cluster.errors import ClusterError, WorkerDiedError, WorkerError
from rlkit.cluster.futures import WorkerFuture
from rlkit.cluster.group import WorkerGroup
from rlkit.cluster.pool import ResourcePool
from rlkit.cluster.protocols import register
from rlkit.cluster.runtime import ClusterRuntime
from rlkit.cluster.worker import RoleSpec, WorkerContext

__all__ = [
    "ClusterError",
    "ClusterRuntime",
    "ResourcePool",
    "RoleSpec",
    "WorkerContext",
    "WorkerDiedError",
    "WorkerError",
    "WorkerFuture",
    "WorkerGroup",
    "register",
]
