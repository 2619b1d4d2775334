"""The Ray backend: one Ray actor per rank, placed on the pool's placement groups.

Start-up: place the actors (one per device slot), ask rank 0 for its address and a free
port, then have every rank join `torch.distributed` concurrently (a rendezvous needs all
ranks at once), then build each role on every rank concurrently (constructors may use
collectives, e.g. FSDP sharding).
"""

from __future__ import annotations

from typing import Any

import torch

from rlkit.cluster.errors import WorkerDiedError
from rlkit.cluster.futures import Forwarded, RayFuture, WorkerFuture
from rlkit.cluster.pool import ResourcePool
from rlkit.cluster.worker import RankHost, RoleSpec, WorkerContext


class _Shared:
    """An argument put once in the object store and resolved on every rank (not copied per rank)."""

    __slots__ = ("ref",)

    def __init__(self, ref):
        self.ref = ref


class RemoteRankHost(RankHost):
    """`RankHost` as a Ray actor: resolves shared arguments before the call."""

    def call_shared(self, role: str, method: str, args: tuple, kwargs: dict) -> Any:
        import ray

        def resolve(v):
            if isinstance(v, Forwarded):  # another call's result, read here from the object store
                return v.resolve()
            return ray.get(v.ref) if isinstance(v, _Shared) else v

        args = tuple(resolve(a) for a in args)
        kwargs = {k: resolve(v) for k, v in kwargs.items()}
        return self.call_captured(role, method, args, kwargs)


def _worth_sharing(value: Any) -> bool:
    # Tensors and batches are worth one object-store copy; small Python values are not.
    return isinstance(value, torch.Tensor) or callable(getattr(value, "unpad", None))


class RayBackend:
    """Drives one actor per rank; every call returns a `RayFuture`."""

    name = "ray"

    def __init__(self, pool: ResourcePool, threads_per_worker: int | None, label: str):
        self.pool = pool
        self.label = label
        self.world_size = pool.world_size
        self.threads = threads_per_worker  # None: the node's cores divided among its ranks (set in start)
        self.actors: list = []
        self.pids: list[int] = []
        self.node_ids: list[str] = []
        self.role_names: list[str] = []
        self.dead: tuple[int, str, str] | None = None  # (rank, call that found it dead, Ray's cause)
        self.connection: tuple | None = None  # the Ray connection the actors belong to (`ray_connection()`)

    # ---- start-up -----------------------------------------------------------------------------

    def start(self, roles: dict[str, RoleSpec]) -> None:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rlkit.cluster.runtime import ray_connection

        self.role_names = list(roles)
        groups = self.pool.placement_groups()
        self.connection = ray_connection()
        cuda = self.pool.resolved_device() == "cuda"
        # Threads are set with torch.set_num_threads in setup(): a runtime_env just for OMP_NUM_THREADS
        # would cost a fresh worker process start (seconds) per rank.
        options = {}
        if cuda:
            # Every rank sees all of its node's GPUs (NCCL peer access) and picks the one Ray assigned.
            options["runtime_env"] = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
        remote_cls = ray.remote(RemoteRankHost)
        for pg in groups:
            for local_rank in range(self.pool.devices_per_node):
                self.actors.append(
                    remote_cls.options(
                        num_cpus=self.pool.cpus_per_device,
                        num_gpus=1 if cuda else 0,
                        max_restarts=0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(
                            placement_group=pg, placement_group_bundle_index=local_rank
                        ),
                        **options,
                    ).remote()
                )

        infos = self._wait_all("info", [a.info.remote() for a in self.actors])
        port = self._wait_all("free_port", [self.actors[0].free_port.remote()])[0]
        init_method = f"tcp://{infos[0]['address']}:{port}"
        dpn = self.pool.devices_per_node
        if self.threads is None:
            # The node's cores divided among the group's ranks on it (Ray would leave torch at 1 thread).
            self.threads = max(1, min(info["cores"] for info in infos) // dpn)
        contexts = []
        for rank, info in enumerate(infos):
            local_rank = rank % dpn
            if cuda:
                index = info["gpu_ids"][0] if info["gpu_ids"] else local_rank
                device = torch.device("cuda", index)
            else:
                device = torch.device("cpu")
            contexts.append(
                WorkerContext(rank=rank, world_size=self.world_size, local_rank=local_rank, node_rank=rank // dpn,
                              device=device, backend="ray", threads=self.threads)
            )
        dist_backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        self.pids = self._wait_all(
            "setup", [a.setup.remote(ctx, init_method, dist_backend) for a, ctx in zip(self.actors, contexts)]
        )
        self.node_ids = [info["node_id"] for info in infos]
        for role, spec in roles.items():
            refs = [a.construct_captured.remote(role, spec.cls, spec.kwargs) for a in self.actors]
            on_death = lambda rank, cause, role=role: self._death(rank, cause, role, "__init__")  # noqa: E731
            RayFuture(refs, role, "__init__", lambda values: values, on_death, self.world_size).result()

    def _wait_all(self, step: str, refs: list) -> list:
        """Results of a start-up step on every rank; a dead actor becomes a `WorkerDiedError`."""
        on_death = lambda rank, cause: self._death(rank, f"(while starting the group: {step}) {cause}")  # noqa: E731
        return RayFuture(refs, "(start-up)", step, lambda values: values, on_death, self.world_size).result()

    def disconnected(self) -> bool:
        """True once the Ray connection the actors were made on has ended (Ray shut down or restarted):
        they died with it, and their handles mean nothing to a later connection."""
        from rlkit.cluster.runtime import ray_connection

        return bool(self.actors) and self.connection != ray_connection()

    # ---- calls --------------------------------------------------------------------------------

    def _death(self, rank: int, cause: str, role: str = "", method: str | None = None) -> WorkerDiedError:
        error = WorkerDiedError(role or ", ".join(self.role_names), method, rank, self.world_size,
                                self.role_names, cause)
        self.dead = (rank, f"{role}.{method}" if method else "start-up", cause)
        return error

    def submit(self, role: str, method: str, calls: list[tuple[tuple, dict]], finish) -> WorkerFuture:
        import ray

        if not self.actors:
            raise RuntimeError(f"{self.label} is closed")
        if self.disconnected():
            raise RuntimeError(f"{self.label}: the Ray cluster its workers ran on was shut down (or replaced by a "
                               f"new Session's); its workers are gone, create a new WorkerGroup")
        if self.dead is not None:
            rank, during, cause = self.dead
            raise WorkerDiedError(role, None, rank, self.world_size, self.role_names,
                                  f"(found dead earlier, during {during}) {cause}")
        # Values passed to every rank unchanged are put in the object store once.
        shared: dict[int, _Shared] = {}
        if self.world_size > 1:
            first_args, first_kwargs = calls[0]
            for value in (*first_args, *first_kwargs.values()):
                if _worth_sharing(value) and all(
                    any(v is value for v in (*a, *k.values())) for a, k in calls[1:]
                ):
                    shared[id(value)] = _Shared(ray.put(value))

        def swap(v):
            return shared.get(id(v), v)

        refs = [
            actor.call_shared.remote(role, method, tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
            for actor, (args, kwargs) in zip(self.actors, calls)
        ]

        def on_death(rank: int, cause: str) -> WorkerDiedError:
            return self._death(rank, cause, role, method)

        return RayFuture(refs, role, method, finish, on_death, self.world_size)

    def close(self) -> None:
        import ray

        # Actors of an ended connection are already gone (and their handles mean nothing to a new one).
        if self.actors and not self.disconnected():
            for actor in self.actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # already dead
                    pass
        self.actors = []
