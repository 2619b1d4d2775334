"""The single controller: protocols, worker groups on both backends, concurrency, failures.

All Ray tests share the session-scoped `ray_cluster` fixture (one local Ray cluster per
test run). Role classes live at module level so that Ray workers can import them.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import torch

from rlkit.batch import Batch
from rlkit.cluster import (
    ResourcePool,
    RoleSpec,
    WorkerContext,
    WorkerDiedError,
    WorkerError,
    WorkerGroup,
    register,
)
from rlkit.cluster.protocols import collect, dispatch, registered_methods


def make_batch(n: int) -> Batch:
    """Rows tagged by index: prompt_ids[i] = [i, i, i], prompt_text[i] = f"p{i}"."""
    ids = torch.arange(n).repeat_interleave(3).view(n, 3)
    return Batch(
        prompt_ids=ids,
        prompt_mask=torch.ones(n, 3, dtype=torch.long),
        response_ids=ids[:, :2] * 10,
        response_mask=torch.ones(n, 2, dtype=torch.long),
        prompt_text=[f"p{i}" for i in range(n)],
        batch_size=[n],
    )


# ---- role classes (module level: Ray workers import them) -------------------------------------


class Scorer:
    """Writes scores = 2 * row index + offset, and tags each row with the rank that computed it."""

    def __init__(self, ctx: WorkerContext, offset: float = 0.0):
        self.ctx, self.offset = ctx, offset

    @register("split")
    def score(self, batch: Batch, bonus: float = 0.0) -> Batch:
        rows = batch.prompt_ids[:, 0].float()  # (b,) original row index
        return batch.replace(
            scores=2 * rows + self.offset + bonus,
            group_id=torch.full((len(batch),), self.ctx.rank, dtype=torch.long),
        )

    @register("split")
    def count(self, batch: Batch) -> int:
        return len(batch)

    @register("split")
    def expand(self, batch: Batch, k: int) -> Batch:
        """k copies of each row, in order (like k samples per prompt)."""
        return batch.select(torch.arange(len(batch)).repeat_interleave(k))

    @register("broadcast")
    def where(self) -> tuple:
        return self.ctx.rank, self.ctx.world_size, self.ctx.local_rank, self.ctx.node_rank, os.getpid()

    @register("broadcast")
    def all_reduce_rank(self) -> float:
        import torch.distributed as dist

        t = torch.tensor([float(self.ctx.rank)])
        dist.all_reduce(t)  # sum over ranks
        return t.item()

    @register("broadcast")
    def threads(self) -> int:
        return torch.get_num_threads()

    @register("broadcast")
    def checksum(self, batch: Batch, weights: torch.Tensor) -> float:
        return float((batch.prompt_ids[:, 0].float() * weights).sum())

    @register("rank0")
    def whoami(self) -> int:
        return self.ctx.rank

    @register("rank0")
    def fail_on(self, rank: int) -> str:
        if self.ctx.rank == rank:
            _raise_deep(f"bad row on rank {rank}")
        return "ok"

    @register("broadcast")
    def sleep(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    @register("broadcast")
    def pid(self) -> int:
        return os.getpid()

    def not_exposed(self) -> None:
        pass


def _raise_deep(message: str) -> None:
    raise ValueError(message)


class Counter:
    """A second role colocated with Scorer: keeps state between calls."""

    def __init__(self, ctx: WorkerContext, start: int = 0):
        self.n = start

    @register("broadcast")
    def bump(self) -> int:
        self.n += 1
        return self.n

    @register("broadcast")
    def pid(self) -> int:
        return os.getpid()

    @register("broadcast")
    def echo(self, value):
        return value


# ---- protocols (pure, no Ray) -----------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
def test_split_dispatch_and_collect_round_trip(n):
    world = 3
    batch = make_batch(n)
    calls, plan = dispatch("split", (batch, 0.5), {"flag": True}, world, "r.m")
    assert len(calls) == world
    assert plan.pad == (-n) % world
    assert sum(plan.part_sizes) == n + plan.pad
    # Contiguous parts in rank order; the non-batch arguments go to every rank unchanged.
    seen = torch.cat([args[0].prompt_ids[:, 0] for args, _ in calls])
    assert seen[:n].tolist() == list(range(n))
    assert all(args[1] == 0.5 and kwargs == {"flag": True} for args, kwargs in calls)
    out = collect("split", [args[0] for args, _ in calls], plan, "r.m")
    assert len(out) == n
    assert out.prompt_ids[:, 0].tolist() == list(range(n))
    assert list(out.prompt_text) == [f"p{i}" for i in range(n)]


def test_split_collect_drops_padding_of_expanded_results():
    batch = make_batch(5)
    calls, plan = dispatch("split", (), {"batch": batch}, 2, "r.m")  # keyword batch
    assert plan.pad == 1
    # Each rank returns 3 rows per input row, in order: padding is the last 3 rows.
    results = [kw["batch"].select(torch.arange(len(kw["batch"])).repeat_interleave(3)) for _, kw in calls]
    out = collect("split", results, plan, "r.m")
    assert out.prompt_ids[:, 0].tolist() == [i for i in range(5) for _ in range(3)]


def test_split_collect_rejects_uneven_row_ratios():
    calls, plan = dispatch("split", (make_batch(4),), {}, 2, "r.m")
    results = [calls[0][0][0], calls[1][0][0].select([0])]
    with pytest.raises(ValueError, match="same whole number of rows"):
        collect("split", results, plan, "r.m")


def test_dispatch_errors_name_the_method():
    with pytest.raises(TypeError, match="actor.update .*without a Batch"):
        dispatch("split", (torch.zeros(3),), {}, 2, "actor.update")
    with pytest.raises(ValueError, match="empty Batch"):
        dispatch("split", (make_batch(1).select([]),), {}, 2, "actor.update")
    with pytest.raises(ValueError, match="protocol must be one of"):
        register("scatter")


def test_broadcast_and_rank0_collect():
    calls, plan = dispatch("broadcast", (1,), {"a": 2}, 3, "r.m")
    assert calls == [((1,), {"a": 2})] * 3 and plan is None
    assert collect("broadcast", [0, 1, 2], None, "r.m") == [0, 1, 2]
    assert collect("rank0", ["zero", "one"], None, "r.m") == "zero"


def test_registered_methods():
    assert registered_methods(Scorer)["score"] == "split"
    assert registered_methods(Scorer)["where"] == "broadcast"
    assert registered_methods(Scorer)["whoami"] == "rank0"
    assert "not_exposed" not in registered_methods(Scorer)


# ---- Ray backend ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def group2(ray_cluster):
    """Two ranks on one node, two colocated roles."""
    pool = ResourcePool(nodes=1, devices_per_node=2, name="group2")
    group = WorkerGroup(
        pool,
        {"scorer": RoleSpec(Scorer, kwargs={"offset": 100.0}), "counter": RoleSpec(Counter, kwargs={"start": 10})},
        threads_per_worker=1,
    )
    yield group
    group.close()
    pool.close()


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_ray_split_keeps_order_and_drops_padding(group2, n):
    out = group2.scorer.score(make_batch(n), bonus=0.5)
    assert len(out) == n
    assert out.scores.tolist() == [2 * i + 100.5 for i in range(n)]
    assert list(out.prompt_text) == [f"p{i}" for i in range(n)]
    # Contiguous halves: rows 0..ceil(n/2)-1 on rank 0, the rest on rank 1.
    half = -(-n // 2)
    assert out.group_id.tolist() == [0] * half + [1] * (n - half)


def test_ray_split_non_batch_results_come_back_per_rank(group2):
    assert group2.scorer.count(make_batch(5)) == [3, 3]  # 5 rows + 1 padding row, over 2 ranks
    out = group2.scorer.expand(make_batch(3), k=2)
    assert out.prompt_ids[:, 0].tolist() == [0, 0, 1, 1, 2, 2]


def test_ray_broadcast_rank0_and_torch_distributed(group2):
    where = group2.scorer.where()
    assert [w[:4] for w in where] == [(0, 2, 0, 0), (1, 2, 1, 0)]
    assert where[0][4] != where[1][4]  # one process per rank
    assert group2.scorer.all_reduce_rank() == [1.0, 1.0]  # gloo all-reduce of ranks 0 + 1
    assert group2.scorer.whoami() == 0
    assert group2.scorer.threads() == [1, 1]
    assert group2.world_size == 2
    # Tensors and batches sent to every rank arrive whole (put once in the object store).
    weights = torch.arange(5.0)
    assert group2.scorer.checksum(make_batch(5), weights=weights) == [30.0, 30.0]  # sum(i * i)


def test_colocated_roles_share_a_process_and_keep_state(group2):
    assert group2.scorer.pid() == group2.counter.pid() == group2.pids
    first = group2.counter.bump()
    assert group2.counter.bump() == [first[0] + 1, first[1] + 1]


def test_separate_pools_run_concurrently_in_separate_processes(ray_cluster, group2):
    pools = [ResourcePool(nodes=1, devices_per_node=1, name=f"solo{i}") for i in range(2)]
    groups = [WorkerGroup(p, {"scorer": RoleSpec(Scorer)}, threads_per_worker=1) for p in pools]
    try:
        pids = {pid for g in groups for pid in g.pids}
        assert len(pids) == 2 and not pids & set(group2.pids)
        for g in groups:  # warm both up so that the timing below is the calls only
            g.scorer.pid()
        start = time.monotonic()
        futures = [g.scorer.sleep.submit(1.0) for g in groups]
        results = [f.result() for f in futures]
        elapsed = time.monotonic() - start
        assert [r[0] for r in results] == [g.pids[0] for g in groups]
        assert elapsed < 1.8, f"two 1-second calls on separate pools took {elapsed:.2f} s: not concurrent"
    finally:
        for g, p in zip(groups, pools):
            g.close()
            p.close()


def test_a_result_forwarded_to_another_group_does_not_pass_through_the_driver(ray_cluster, group2):
    pool = ResourcePool(nodes=1, devices_per_node=1, name="forward")
    other = WorkerGroup(pool, {"counter": RoleSpec(Counter)}, threads_per_worker=1)
    try:
        where = group2.scorer.where.submit()
        forwarded = where.forward(1)
        assert type(forwarded).__name__ == "Forwarded"  # an object-store reference, not the value
        assert other.counter.echo(forwarded) == [where.result()[1]]  # rank 1's result, read by `other`
        failing = group2.scorer.fail_on.submit(0)
        with pytest.raises(WorkerError, match=r"(?s)forwarded from scorer.fail_on rank 0.*bad row on rank 0"):
            other.counter.echo(failing.forward(0))
    finally:
        other.close()
        pool.close()


def test_local_futures_forward_the_value_itself():
    with WorkerGroup(None, {"counter": RoleSpec(Counter, kwargs={"start": 4})}, backend="local") as group:
        assert group.counter.echo(group.counter.bump.submit().forward(0)) == [5]  # rank 0's own result, as on Ray


def test_future_done_and_timeout(group2):
    fut = group2.scorer.sleep.submit(0.5)
    assert not fut.done()
    with pytest.raises(TimeoutError, match="still running"):
        fut.result(timeout=0.05)
    assert fut.result() == group2.pids
    assert fut.done()


def test_worker_exception_names_role_rank_and_worker_traceback(group2):
    with pytest.raises(WorkerError) as info:
        group2.scorer.fail_on(1)
    err = info.value
    text = str(err)
    assert err.rank == 1 and err.role == "scorer" and err.method == "fail_on"
    assert "rank 1 of 2" in text and "scorer.fail_on" in text
    assert "ValueError: bad row on rank 1" in text
    assert "_raise_deep" in text and "test_cluster.py" in text  # the worker's own frames
    # The group still works after a user exception.
    assert group2.scorer.fail_on(5) == "ok"


def test_unknown_method_and_bad_roles(group2):
    with pytest.raises(AttributeError, match="no registered method 'not_exposed'"):
        group2.scorer.not_exposed
    with pytest.raises(AttributeError, match="no role 'critic'"):
        group2.critic
    with pytest.raises(ValueError, match="role name 'close'"):
        WorkerGroup(None, {"close": RoleSpec(Scorer)}, backend="local")
    with pytest.raises(RuntimeError, match="already hosts a live worker group"):
        WorkerGroup(group2.pool, {"other": RoleSpec(Counter)})


def test_role_constructor_error_names_role(ray_cluster):
    pool = ResourcePool(nodes=1, devices_per_node=1)
    try:
        with pytest.raises(WorkerError, match=r"scorer.__init__ raised TypeError on rank 0"):
            WorkerGroup(pool, {"scorer": RoleSpec(Scorer, kwargs={"no_such_arg": 1})})
        pool.claim(object(), "another group")  # the failed group released the pool for the next one
    finally:
        pool.close()


def test_killed_worker_raises_clear_error_quickly(ray_cluster):
    pool = ResourcePool(nodes=1, devices_per_node=2, name="doomed")
    group = WorkerGroup(pool, {"scorer": RoleSpec(Scorer), "counter": RoleSpec(Counter)}, threads_per_worker=1)
    try:
        victim = group.pids[1]
        fut = group.scorer.sleep.submit(60.0)  # in flight when the process dies
        time.sleep(0.5)
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError) as info:
            fut.result()
        assert time.monotonic() - start < 30
        assert info.value.rank == 1 and "rank 1 of 2" in str(info.value) and "'scorer'" in str(info.value)
        assert "scorer.sleep" in str(info.value)
        # Later calls fail at once, naming the dead rank.
        with pytest.raises(WorkerDiedError, match="rank 1 of 2"):
            group.counter.bump()
    finally:
        group.close()
        pool.close()


# ---- runtime and Session on the shared cluster --------------------------------------------------


def test_runtime_reuse_rules(ray_cluster):
    from rlkit.cluster import ClusterRuntime

    assert ray_cluster.can_serve(ClusterRuntime())  # any local cluster will do
    assert ray_cluster.can_serve(ClusterRuntime(num_cpus=8))
    assert not ray_cluster.can_serve(ClusterRuntime(num_cpus=5))  # different size: restart
    assert not ray_cluster.can_serve(ClusterRuntime(address="10.0.0.1:6379"))  # another cluster
    assert not ray_cluster.can_serve(ClusterRuntime(backend="local"))
    with pytest.raises(ValueError, match="backend must be 'ray' or 'local'"):
        ClusterRuntime(backend="slurm")


def test_session_joins_running_ray_and_leaves_it_running(ray_cluster):
    import ray

    from rlkit.session import Session

    mine = None
    try:
        with Session(num_cpus=8) as s:
            assert not s.runtime.owns_ray  # the fixture's cluster: joined, not owned
            group = s.runtime.make_group({"counter": RoleSpec(Counter, kwargs={"start": 1})})
            assert group.counter.bump() == [2]
            pool = group.pool
            assert s.runtime.groups == [group] and s.runtime.pools == [pool]
            # Built directly while the Session is live: the caller's, not the Session's.
            mine = WorkerGroup(ResourcePool(name="mine"), {"counter": RoleSpec(Counter)}, threads_per_worker=1)
            assert s.runtime.groups == [group]
        assert s.closed and group.closed and pool.node_ids == []  # placement groups released
        assert ray.is_initialized()
        with pytest.raises(RuntimeError, match="is closed"):
            group.counter.bump()
        assert not mine.closed and mine.counter.bump() == [1]
    finally:
        if mine is not None:
            mine.close()
            mine.pool.close()


def test_each_runtime_closes_only_what_it_made(ray_cluster):
    import ray

    from rlkit.cluster import ClusterRuntime

    a, b = ClusterRuntime().start(), ClusterRuntime().start()  # both join the fixture's cluster
    try:
        ga = a.make_group({"counter": RoleSpec(Counter)}, name="a")
        gb = b.make_group({"counter": RoleSpec(Counter, kwargs={"start": 10})}, name="b")
        assert a.groups == [ga] and a.pools == [ga.pool]
        assert b.groups == [gb] and b.pools == [gb.pool]
        a.close()
        assert ga.closed and ga.pool.node_ids == [] and a.groups == [] and a.pools == []
        assert not gb.closed and gb.counter.bump() == [11]
        assert ray.is_initialized()  # a joined runtime leaves Ray running
        with pytest.raises(RuntimeError, match="closed runtime"):
            a.make_group({"counter": RoleSpec(Counter)})
    finally:
        a.close()
        b.close()
    assert gb.closed and gb.pool.node_ids == []


def test_dropped_pool_releases_its_placement_groups(ray_cluster):
    import gc

    from ray.util.placement_group import placement_group_table

    pool = ResourcePool(name="dropped")
    WorkerGroup(pool, {"counter": RoleSpec(Counter)}, threads_per_worker=1).close()
    pg = pool.placement_groups()[0]  # still placed: closing a group leaves its pool's slots reserved
    assert placement_group_table(pg)["state"] == "CREATED"
    del pool
    gc.collect()
    deadline = time.monotonic() + 10
    while placement_group_table(pg)["state"] != "REMOVED" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert placement_group_table(pg)["state"] == "REMOVED"


# ---- local backend ----------------------------------------------------------------------------


def test_local_backend_runs_same_class_with_same_results(group2):
    local = WorkerGroup(ResourcePool(nodes=1, devices_per_node=2), {"scorer": RoleSpec(Scorer, kwargs={"offset": 100.0})},
                        backend="local")
    try:
        assert local.world_size == 1 and local.pids == [os.getpid()]
        for n in (1, 4, 5):
            a = local.scorer.score(make_batch(n), bonus=0.5)
            b = group2.scorer.score(make_batch(n), bonus=0.5)
            assert torch.equal(a.scores, b.scores) and torch.equal(a.prompt_ids, b.prompt_ids)
            assert list(a.prompt_text) == list(b.prompt_text)
        assert local.scorer.all_reduce_rank() == [0.0]  # torch.distributed is up, world size 1
        assert local.scorer.whoami() == 0
        assert local.scorer.sleep.submit(0.0).result() == [os.getpid()]
    finally:
        local.close()


def test_local_backend_keeps_the_worker_exception_and_breakpoint_works(monkeypatch):
    group = WorkerGroup(None, {"scorer": RoleSpec(Scorer)}, backend="local")
    try:
        # The worker's own exception type comes back, with its frames and a note naming role and rank.
        with pytest.raises(ValueError, match="bad row on rank 0") as info:
            group.scorer.fail_on(0)
        assert any("scorer.fail_on on rank 0 of 1" in note for note in info.value.__notes__)
        frames = [f.name for f in info.traceback]
        assert "_raise_deep" in frames and "fail_on" in frames
        # breakpoint() inside worker code calls this process's debugger hook, in the worker's frame.
        stops = []
        monkeypatch.setattr(sys, "breakpointhook", lambda *a, **k: stops.append(sys._getframe(1).f_code.co_name))

        class Debugged(Scorer):
            @register("rank0")
            def inspect(self):
                breakpoint()
                return "resumed"

        with WorkerGroup(None, {"dbg": RoleSpec(Debugged)}, backend="local") as dbg:
            assert dbg.dbg.inspect() == "resumed"
        assert stops == ["inspect"]
    finally:
        group.close()
