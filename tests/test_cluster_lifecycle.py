"""Session lifecycle and multi-node placement, each in its own Python process.

These tests start and stop their own Ray clusters, which must not fight the shared
`ray_cluster` of the test run, so each runs a script in a subprocess that prints one
JSON line of facts; the assertions are made here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(body: str, timeout: float = 240) -> dict:
    """Run `body` in a fresh interpreter at the repository root; return the dict it printed last as JSON."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, f"script failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


_HELPERS = """
import json, time
import psutil

def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False

def gone_within(pids, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [(p, psutil.Process(p).name()) for p in pids if alive(p)]

def descendants():
    return {p.pid for p in psutil.Process().children(recursive=True)}

def ray_core():
    return {p.pid for p in psutil.Process().children(recursive=True) if p.name() in ("gcs_server", "raylet")}
"""


@pytest.mark.slow
def test_session_lifecycle_frees_every_process():
    facts = run_script(
        _HELPERS
        + """
import ray
from rlkit.session import Session
from rlkit.cluster import ResourcePool, RoleSpec, WorkerGroup
from tests.test_cluster import Counter

facts = {}

# The local backend never starts Ray.
with Session(backend="local") as s0:
    g0 = s0.runtime.make_group({"counter": RoleSpec(Counter, kwargs={"start": 5})})
    facts["local_bump"] = g0.counter.bump()
    facts["local_ray"] = ray.is_initialized()

# A Session starts a local Ray cluster; a group it makes, and one built directly (the caller's).
s1 = Session(num_cpus=4)
g1 = s1.runtime.make_group({"counter": RoleSpec(Counter)})
facts["g1_bump"] = g1.counter.bump()
mine = WorkerGroup(ResourcePool(nodes=1, devices_per_node=1), {"counter": RoleSpec(Counter)}, threads_per_worker=1)
facts["mine_bump"] = mine.counter.bump()
started = descendants()  # gcs, raylet, workers ... all started by this Session
facts["n_started"] = len(started)
core = ray_core()
facts["n_core"] = len(core)
g1_pids, mine_pids = g1.pids, mine.pids

# Re-running the cell: same settings, so the Ray cluster is reused and s1's workers are closed.
t = time.monotonic()
with Session(num_cpus=4) as s2:
    facts["reuse_s"] = time.monotonic() - t
    facts["s1_closed"], facts["g1_closed"] = s1.closed, g1.closed
    facts["g1_left"] = gone_within(g1_pids, 15)
    facts["mine_kept"] = not mine.closed and mine.counter.bump() == [2]  # not s1's to close
    s1.close()  # closing the replaced Session is a no-op: s2's cluster survives it
    g2 = s2.runtime.make_group({"counter": RoleSpec(Counter, kwargs={"start": 7})})
    facts["g2_bump"] = g2.counter.bump()
    facts["same_ray_core"] = core == ray_core()
    started |= descendants()
    # Other settings: s2's Ray is shut down (taking `mine` with it) and a fresh one started.
    with Session(num_cpus=3) as s3:
        facts["s2_closed"], facts["mine_closed"] = s2.closed, mine.closed
        facts["mine_left"] = gone_within(mine_pids, 15)
        try:
            mine.counter.bump()
            facts["mine_call"] = "answered?!"
        except RuntimeError as exc:
            facts["mine_call"] = str(exc)
        # Its pool forgot the old cluster's placement: it hosts a group on the new one.
        again = WorkerGroup(mine.pool, {"counter": RoleSpec(Counter, kwargs={"start": 3})}, threads_per_worker=1)
        facts["again_bump"] = again.counter.bump()
        started |= descendants()
facts["ray_after_with"] = ray.is_initialized()
facts["all_left"] = gone_within(started, 20)
print(json.dumps(facts))
"""
    )
    assert facts["local_bump"] == [6] and facts["local_ray"] is False
    assert facts["g1_bump"] == [1] and facts["mine_bump"] == [1] and facts["n_started"] >= 3
    assert facts["s1_closed"] and facts["g1_closed"] and facts["g1_left"] == []
    assert facts["mine_kept"]
    assert facts["reuse_s"] < 5, "re-using the live cluster should not restart Ray"
    assert facts["g2_bump"] == [8] and facts["same_ray_core"] and facts["n_core"] == 2
    assert facts["s2_closed"] and facts["mine_closed"] and facts["mine_left"] == []
    assert "was shut down" in facts["mine_call"], facts["mine_call"]
    assert facts["again_bump"] == [4]
    assert facts["ray_after_with"] is False and facts["all_left"] == []

@pytest.mark.slow
def test_two_node_cluster_places_one_rank_per_node():
    temp_dir = f"/tmp/rlkit-mn-{os.getpid()}"
    facts = run_script(
        _HELPERS
        + f"""
import os, shutil
from ray.cluster_utils import Cluster
import ray
from rlkit.session import Session
from rlkit.cluster import ResourcePool, RoleSpec, WorkerGroup
from tests.test_cluster import Scorer, make_batch

from ray._common.utils import get_default_ray_temp_dir

# Cluster.add_node writes the head's address under Ray's default temp dir, which it does not create.
os.makedirs(get_default_ray_temp_dir(), exist_ok=True)
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 3, "temp_dir": {temp_dir!r}}})
cluster.add_node(num_cpus=3)
cluster.wait_for_nodes()
facts = {{}}
try:
    with Session(address=cluster.address) as s:  # joins the running cluster
        nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        spread = ResourcePool(nodes=2, devices_per_node=1)
        g = WorkerGroup(spread, {{"scorer": RoleSpec(Scorer)}}, threads_per_worker=1)
        facts["n_nodes"] = len(nodes)
        facts["rank_nodes_distinct"] = len(set(g.node_ids)) == 2 and sorted(g.node_ids) == nodes
        facts["pool_node_ids"] = spread.node_ids == g.node_ids
        facts["where"] = [w[:4] for w in g.scorer.where()]
        facts["all_reduce"] = g.scorer.all_reduce_rank()
        facts["scores"] = g.scorer.score(make_batch(5)).scores.tolist()

        packed = ResourcePool(nodes=1, devices_per_node=2)
        h = WorkerGroup(packed, {{"scorer": RoleSpec(Scorer)}}, threads_per_worker=1)
        facts["packed_same_node"] = len(set(h.node_ids)) == 1

        too_big = ResourcePool(nodes=3, devices_per_node=1, placement_timeout_s=3)
        try:
            WorkerGroup(too_big, {{"scorer": RoleSpec(Scorer)}})
            facts["too_big"] = "placed?!"
        except RuntimeError as exc:
            facts["too_big"] = str(exc)
    facts["ray_after"] = ray.is_initialized()
finally:
    cluster.shutdown()
    shutil.rmtree({temp_dir!r}, ignore_errors=True)
print(json.dumps(facts))
""",
    )
    assert facts["n_nodes"] == 2
    assert facts["rank_nodes_distinct"] and facts["pool_node_ids"]
    assert facts["where"] == [[0, 2, 0, 0], [1, 2, 0, 1]]  # (rank, world, local_rank, node_rank)
    assert facts["all_reduce"] == [1.0, 1.0]
    assert facts["scores"] == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert facts["packed_same_node"]
    assert re.search(r"could not place node \d of 3", facts["too_big"]), facts["too_big"]
    assert facts["ray_after"] is False
