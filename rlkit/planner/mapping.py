"""What the planner returns: mappings of models onto devices, their predicted costs, and the ranking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from rlkit.planner.cost_model import ModelSpec, Strategy, Workload
from rlkit.planner.dataflow import Dataflow
from rlkit.planner.devices import ClusterSpec


class PlanError(ValueError):
    """No mapping fits: the message says which models and how much memory is missing, or, when memory is not
    the reason, that the workload has too few sequences to keep every device busy."""


@dataclass(frozen=True)
class SearchSpace:
    """Which parallel strategies the search may use (what the training/rollout engines can run)."""

    three_d: bool = True
    """Megatron-style strategies: weights sharded over t * p, optimizer states over all devices."""
    fsdp: bool = True
    """FSDP / ZeRO-3 strategies: everything sharded over the data-parallel ranks too."""
    max_tp: int | None = None
    """Largest tensor-parallel size in training/inference; None = devices per node."""
    pipeline: bool = True
    """Allow pipeline parallelism (p > 1, dividing the layer count)."""
    gen_tp: tuple[int, ...] | None = None
    """Allowed generation tensor-parallel sizes; None = any divisor of the node (and of t under 3D)."""


class Pool(NamedTuple):
    """One colocated group of a mapping, as the cluster layer needs it."""

    roles: tuple[str, ...]
    """Role names that share the group's devices."""
    devices: int
    """Devices of the group."""


@dataclass(frozen=True)
class CallPlan:
    """The predicted cost of one call in a mapping."""

    stage: str
    """Stage the call belongs to."""
    role: str
    """Model role."""
    kind: str
    """"generate", "infer" or "train"."""
    time: float
    """Predicted seconds (generation includes the train->generate resharding)."""
    note: str = ""
    """Choice made for the call (recomputation, generation layout)."""


@dataclass(frozen=True)
class GroupPlan:
    """One colocated group: its devices, each model's strategy, its calls and memory."""

    roles: tuple[str, ...]
    """Roles in the group."""
    devices: int
    """Devices of the group."""
    strategies: tuple[Strategy, ...]
    """Parallel strategy per role, in `roles` order."""
    calls: tuple[CallPlan, ...]
    """Every call the group runs, in dataflow order."""
    resident_per_device: float
    """Bytes per device of the persistent states of all roles."""
    memory_per_device: float
    """Peak bytes per device: resident + the largest transient of any call."""

    def stage_time(self, stage: str) -> float:
        """Seconds the group spends in `stage` (its calls run one after another)."""
        return sum(c.time for c in self.calls if c.stage == stage)

    @property
    def total_time(self) -> float:
        """Seconds summed over all stages (the group's own objective)."""
        return sum(c.time for c in self.calls)


@dataclass(frozen=True)
class Mapping:
    """A placement with device counts and strategies, and its predicted cost."""

    groups: tuple[GroupPlan, ...]
    """Colocated groups."""
    stage_times: tuple[tuple[str, float], ...]
    """(stage, seconds): the slowest group per stage."""
    tokens: int
    """Prompt + response tokens per iteration."""

    @property
    def iteration_time(self) -> float:
        """Predicted seconds per RL iteration (sum of the stages)."""
        return sum(t for _, t in self.stage_times)

    @property
    def throughput(self) -> float:
        """Predicted tokens/s: (prompt + response tokens) / iteration time, the paper's metric."""
        return self.tokens / self.iteration_time

    @property
    def memory_per_device(self) -> float:
        """Peak bytes per device over all groups."""
        return max(g.memory_per_device for g in self.groups)

    @property
    def placement(self) -> tuple[tuple[str, ...], ...]:
        """The colocated sets of roles."""
        return tuple(g.roles for g in self.groups)

    @property
    def label(self) -> str:
        """Text like "actor+ref:64 | critic+reward:64"."""
        return " | ".join(f"{'+'.join(g.roles)}:{g.devices}" for g in self.groups)

    def to_pools(self) -> list[Pool]:
        """Per colocated group, the role names and device count."""
        return [Pool(g.roles, g.devices) for g in self.groups]

    def strategy(self, role: str) -> Strategy:
        """The parallel strategy of one role."""
        for g in self.groups:
            if role in g.roles:
                return g.strategies[g.roles.index(role)]
        raise KeyError(f"role {role!r} is not in this mapping ({self.label})")


@dataclass
class Plan:
    """The result of `rlkit.plan`: the best mapping, the ranking of alternatives, and what was assumed."""

    best: Mapping
    """The mapping with the smallest predicted iteration time."""
    candidates: list[Mapping]
    """The best mapping of every placement that fits, fastest first (`candidates[0] is best`)."""
    colocated: Mapping | None
    """The "everything on all devices" mapping (the baseline of speed-up ratios), None if it does not fit."""
    models: dict[str, ModelSpec]
    """Role -> model shape."""
    dataflow: Dataflow
    """The stages that were scored."""
    workload: Workload
    """Batch and lengths."""
    cluster: ClusterSpec
    """Devices."""
    space: SearchSpace = field(default_factory=SearchSpace)
    """Strategies that were allowed."""
    search_seconds: float = 0.0
    """Wall time of the search."""
    mappings_scored: int = 0
    """Device splits scored over all placements."""

    def to_pools(self) -> list[Pool]:
        """Per colocated group of the best mapping, the role names and device count."""
        return self.best.to_pools()

    @property
    def speedup_vs_colocated(self) -> float | None:
        """Predicted throughput of the best mapping over the all-colocated one."""
        return None if self.colocated is None else self.best.throughput / self.colocated.throughput

    def _repr_html_(self) -> str:
        from rlkit.planner.render import plan_html

        return plan_html(self)

    def figure(self):
        """A plotly figure of the candidates' predicted stage times."""
        from rlkit.planner.render import plan_figure

        return plan_figure(self)

    def __str__(self) -> str:
        from rlkit.planner.render import format_plan

        return format_plan(self)
