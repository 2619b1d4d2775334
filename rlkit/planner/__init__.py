"""Auto-mapping: which models share devices, how many devices each group gets, and each model's parallel sizes.

    import rlkit
    from rlkit.planner import LLAMA
    p = rlkit.plan(LLAMA["13b"], "128xA100-80GB")      # the paper's setting: PPO, all four models 13B
    p                                                   # in a notebook: the ranking table
    p.figure()                                          # plotly: predicted stage times per placement
    p.to_pools()                                        # [Pool(roles=('actor', 'ref'), devices=64), ...]

HybridFlow §6: enumerate placements (set partitions of the models), the device
counts at which each colocated group fits memory, the splits of the cluster, and
per model the (data, tensor, pipeline | FSDP) sizes; score with analytical
simulators (compute-bound training and inference, memory-bound generation, the
3D-HybridEngine's resharding). This package imports neither ray nor the session.
"""

from rlkit.planner.api import plan, plan_from_config
from rlkit.planner.cost_model import LLAMA, CallCost, ModelSpec, Strategy, Workload, transition_volumes
from rlkit.planner.dataflow import GRPO, PPO, REMAX, SAFE_RLHF, Call, Dataflow, Stage, rl_dataflow
from rlkit.planner.devices import (
    A100_80GB,
    H100,
    H200,
    HYBRIDFLOW_TESTBED,
    ClusterSpec,
    DeviceSpec,
    cluster,
    get_device,
    parse_cluster,
)
from rlkit.planner.mapping import GroupPlan, Mapping, Plan, PlanError, Pool, SearchSpace
from rlkit.planner.render import format_plan
from rlkit.planner.search import search, set_partitions

__all__ = [
    "plan", "plan_from_config", "format_plan", "search", "set_partitions",
    "Plan", "Mapping", "GroupPlan", "Pool", "PlanError", "SearchSpace",
    "ModelSpec", "Workload", "Strategy", "CallCost", "LLAMA", "transition_volumes",
    "Dataflow", "Stage", "Call", "rl_dataflow", "PPO", "GRPO", "REMAX", "SAFE_RLHF",
    "DeviceSpec", "ClusterSpec", "A100_80GB", "H100", "H200", "HYBRIDFLOW_TESTBED",
    "cluster", "get_device", "parse_cluster",
]
