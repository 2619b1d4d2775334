"""The auto-mapping search (HybridFlow §6, Algorithms 1-2).

1. placements: every set partition of the models into colocated groups (Bell(4) = 15 for PPO);
2. per group, the device counts at which its models fit memory (the smallest is A_min);
3. every split of the N devices over the groups;
4. per model and device count, the parallel strategies (t <= devices per node, p | layers, d = n / (t p), or FSDP),
   pruned to the Pareto front of (memory, time) and cached per (model, device count);
5. score: within a group the calls of one stage add (colocated models time-share the devices), across groups the
   slowest counts, stages add up.

Group sizes are whole divisors of a node below one node and whole nodes above it (a group of 12 GPUs
spanning one and a half machines is not a placement anyone runs). Within a group the combination of strategies
that minimises the group's own summed stage time is kept (found by a Pareto-front knapsack over the roles, then
scored exactly); that is optimal when the group's stages are the bottleneck and a heuristic otherwise (the
paper's per-model optimisation makes the same trade).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rlkit.planner.cost_model import (
    CallCost,
    ModelSpec,
    Strategy,
    Workload,
    generate_cost,
    generation_weight_extra,
    infer_cost,
    resident_bytes,
    train_cost,
    transition_cost,
)
from rlkit.planner.dataflow import Dataflow
from rlkit.planner.devices import ClusterSpec, GiB
from rlkit.planner.mapping import CallPlan, GroupPlan, Mapping, Plan, PlanError, SearchSpace

# ----------------------------------------------------------------------------------------------------------------
# Enumeration helpers (pure)
# ----------------------------------------------------------------------------------------------------------------


def set_partitions(items: Sequence[str]) -> list[tuple[tuple[str, ...], ...]]:
    """Every partition of `items` into non-empty unordered sets (Bell(len(items)) of them), items in given order."""
    items = list(items)
    if not items:
        return [()]
    first, rest = items[0], items[1:]
    out = []
    for part in set_partitions(rest):
        out.append(((first,), *part))  # `first` alone
        for i in range(len(part)):  # `first` joins an existing set
            out.append((*part[:i], (first, *part[i]), *part[i + 1:]))
    return out


def divisors(n: int) -> list[int]:
    """Positive divisors of n, ascending."""
    return [k for k in range(1, n + 1) if n % k == 0]


def group_sizes(num_devices: int, devices_per_node: int) -> list[int]:
    """Device counts a group may have: divisors of a node below one node, whole nodes from one node up."""
    small = [k for k in divisors(devices_per_node) if k < devices_per_node and k <= num_devices]
    return small + list(range(devices_per_node, num_devices + 1, devices_per_node))


def device_splits(total: int, options: Sequence[Sequence[int]]) -> Iterator[tuple[int, ...]]:
    """Every tuple (one size from each option list) that sums to `total`."""
    if not options:
        if total == 0:
            yield ()
        return
    rest_min = sum(min(o) for o in options[1:]) if all(options[1:]) else 0
    for size in options[0]:
        if size + rest_min > total:
            break
        for tail in device_splits(total - size, options[1:]):
            yield (size, *tail)


def enumerate_strategies(model: ModelSpec, n: int, devices_per_node: int, sequences: int,
                         space: SearchSpace) -> list[Strategy]:
    """Parallel strategies of one model on n devices allowed by `space`."""
    max_tp = space.max_tp or devices_per_node
    out: list[Strategy] = []
    for t in divisors(n):
        if t > max_tp or devices_per_node % t:
            continue
        for p in divisors(n // t) if space.pipeline else [1]:
            if model.layers % p:
                continue
            d = n // (t * p)
            if d > sequences:  # more replicas than sequences would leave devices idle
                continue
            if space.three_d:
                out.append(Strategy(d, t, p))
            if space.fsdp and (d > 1 or not space.three_d):
                out.append(Strategy(d, t, p, fsdp=True))
    return out


def generation_tps(strategy: Strategy, n: int, devices_per_node: int, space: SearchSpace) -> list[int]:
    """Generation tensor-parallel sizes reachable from a training strategy (3D-HybridEngine: t_g divides t)."""
    if strategy.fsdp:
        cands = [k for k in divisors(devices_per_node) if k <= n and n % k == 0]
    else:
        cands = divisors(strategy.tp)
    return [k for k in cands if space.gen_tp is None or k in space.gen_tp]


def _front(items: list[tuple], n_fixed: int = 0) -> list[tuple]:
    """Prune partial combinations (combo, memory, time, need, fast): among those that agree on the first `n_fixed`
    combo entries and on the transients (need, fast: maxima over a few option values, so few distinct pairs),
    keep the ones no other beats in both memory and time (a 2-D Pareto front, O(k log k))."""
    groups: dict[tuple, list[tuple]] = {}
    for item in items:
        groups.setdefault((*(id(o) for o in item[0][:n_fixed]), item[3], item[4]), []).append(item)
    kept = []
    for group in groups.values():
        best_time = math.inf
        for item in sorted(group, key=lambda x: (x[1], x[2])):  # increasing memory: keep strictly faster ones
            if item[2] < best_time:
                kept.append(item)
                best_time = item[2]
    return kept


def _pareto(items: list, key) -> list:
    """Items whose key vector no other item weakly dominates (all <=, one <)."""
    keys = [key(x) for x in items]
    keep = []
    for i, ki in enumerate(keys):
        dominated = any(
            all(a <= b for a, b in zip(kj, ki)) and kj != ki or (kj == ki and j < i)
            for j, kj in enumerate(keys) if j != i
        )
        if not dominated:
            keep.append(items[i])
    return keep


# ----------------------------------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GenLayout:
    """One generation layout (tensor-parallel size tg) of one generate call, with its memory-independent parts."""

    tg: int
    extra: float  # bytes per device the generation weights add over the training shard
    per_seq: float  # KV cache + logits bytes per device of one sequence
    per_replica: int  # sequences one replica generates
    sequences: int
    reshard: float  # seconds of the train->generate all-gather


@dataclass(frozen=True)
class _Option:
    """One strategy of one role on n devices, with its calls precomputed."""

    strategy: Strategy
    resident: float
    # per call of the role, in dataflow order: (stage, kind, variants fastest first | generation layouts)
    calls: tuple[tuple[str, str, tuple], ...]
    lower_time: float  # all calls with their fastest variant and unlimited memory: a lower bound
    min_transient: float  # the largest over calls of the smallest transient each call can run with
    fast_transient: float  # the largest transient of the fastest variants (no recomputation)
    generates: bool  # its cost depends on the memory its group leaves free (KV cache)


class _Search:
    """Caches per (role, devices) and per (group, devices); scores splits of the cluster."""

    def __init__(self, models: dict[str, ModelSpec], dataflow: Dataflow, workload: Workload,
                 cluster: ClusterSpec, space: SearchSpace):
        self.models, self.dataflow, self.workload, self.cluster, self.space = models, dataflow, workload, cluster, space
        self.capacity = cluster.device.usable_memory
        self.b = cluster.device.dtype_bytes
        self._stage_rank = {st.name: i for i, st in enumerate(dataflow.stages)}
        self._options: dict[tuple[str, int], list[_Option]] = {}
        self._groups: dict[tuple[tuple[str, ...], int], GroupPlan | None] = {}
        self._deficit: dict[tuple[tuple[str, ...], int], float] = {}
        self._gen: dict[tuple, CallCost | None] = {}

    # ---- per role -------------------------------------------------------------------------------------------
    def options(self, role: str, n: int) -> list[_Option]:
        key = (role, n)
        if key not in self._options:
            self._options[key] = self._build_options(role, n)
        return self._options[key]

    def _build_options(self, role: str, n: int) -> list[_Option]:
        model, wl, cl = self.models[role], self.workload, self.cluster
        trained = self.dataflow.is_trained(role)
        opts = []
        for strat in enumerate_strategies(model, n, cl.devices_per_node, wl.sequences, self.space):
            gen_tps = generation_tps(strat, n, cl.devices_per_node, self.space)
            calls, lower, transient, fast = [], 0.0, 0.0, 0.0
            for stage, call in self.dataflow.calls_of(role):
                if call.kind == "generate":
                    seqs = wl.prompts * call.samples_per_prompt if call.samples_per_prompt else wl.sequences
                    layouts = tuple(
                        _GenLayout(tg, generation_weight_extra(model, strat, tg, self.b),
                                   model.kv_bytes_per_token(self.b) / tg * wl.seq_len + model.vocab * 8,
                                   math.ceil(seqs / (n // tg)), seqs,
                                   transition_cost(model, strat, tg, cl) if trained else 0.0)
                        for tg in gen_tps)
                    if not layouts:
                        break
                    calls.append((stage, "generate", layouts))
                    lower += min(self._gen_cost(role, n, lay, math.inf).time for lay in layouts)
                    transient = max(transient, min(lay.extra + lay.per_seq for lay in layouts))
                    continue
                if call.kind == "train":
                    variants = (train_cost(model, strat, wl, cl), train_cost(model, strat, wl, cl, recompute=True))
                else:
                    seqs = call.samples_per_prompt and wl.prompts * call.samples_per_prompt
                    variants = (infer_cost(model, strat, wl, cl, sequences=seqs),)
                calls.append((stage, call.kind, variants))
                lower += variants[0].time
                transient = max(transient, min(v.transient for v in variants))
                fast = max(fast, variants[0].transient)
            else:
                generates = any(kind == "generate" for _, kind, _ in calls)
                opts.append(_Option(strat, resident_bytes(model, strat, trained, self.b), tuple(calls), lower,
                                    transient, fast, generates))
        # Generation also depends on the memory the whole group leaves free; with unlimited memory in the pruning
        # key, an option is dropped only if another is no worse in memory and in time.
        kept = _pareto(opts, key=lambda o: (o.resident, o.lower_time, o.min_transient, o.fast_transient))
        return sorted(kept, key=lambda o: o.lower_time)

    def _gen_cost(self, role: str, n: int, lay: _GenLayout, free: float) -> CallCost | None:
        """Generation with layout `lay` given `free` bytes per device (None if no sequence fits); incl. resharding."""
        budget = free - lay.extra
        if budget <= 0:
            return None
        fit = lay.per_replica if math.isinf(budget) else min(lay.per_replica, int(budget // lay.per_seq))
        key = (role, lay.tg, n, lay.sequences, fit, lay.reshard)
        if key not in self._gen:
            cost = None if fit < 1 else generate_cost(self.models[role], lay.tg, n, self.workload, self.cluster,
                                                      fit * lay.per_seq, lay.sequences)
            self._gen[key] = cost and CallCost(cost.time + lay.reshard, cost.transient + lay.extra, cost.note)
        return self._gen[key]

    # ---- per group ------------------------------------------------------------------------------------------
    def group(self, roles: tuple[str, ...], n: int) -> GroupPlan | None:
        key = (roles, n)
        if key not in self._groups:
            self._groups[key] = self._build_group(roles, n)
        return self._groups[key]

    def _build_group(self, roles: tuple[str, ...], n: int) -> GroupPlan | None:
        """The group's fastest fitting combination of role strategies (None, with the deficit noted, if none fits).

        Combinations are built role by role, keeping only partial combinations that no other beats in resident
        memory, lower-bound time and largest transient (a multi-objective knapsack); the survivors are then
        scored exactly (generation batch and recomputation depend on the memory the whole group leaves free).
        """
        per_role = [self.options(r, n) for r in roles]
        if not all(per_role):  # a model with no strategy the space allows on n devices: no plan, no memory deficit
            return None
        # roles whose cost depends on the group's free memory (generation) first: partial combinations are only
        # compared when they agree on those roles' strategies
        order = sorted(range(len(roles)), key=lambda i: not any(o.generates for o in per_role[i]))
        n_gen = sum(any(o.generates for o in per_role[i]) for i in order)
        per_role = [per_role[i] for i in order]
        rest_mem = [sum(min(o.resident for o in opts) for opts in per_role[i:]) for i in range(len(roles) + 1)]
        front: list[tuple] = [((), 0.0, 0.0, 0.0, 0.0)]
        for i, opts in enumerate(per_role):
            grown = [((*chosen, o), mem + o.resident, t + o.lower_time, max(need, o.min_transient),
                      max(fast, o.fast_transient))
                     for chosen, mem, t, need, fast in front for o in opts
                     if mem + o.resident + rest_mem[i + 1] + max(need, o.min_transient) <= self.capacity]
            front = _front(grown, n_gen)
        best, best_total = None, math.inf
        for combo, resident, lower, _, _ in sorted(front, key=lambda c: c[2]):
            if lower >= best_total:
                break
            combo = tuple(combo[order.index(i)] for i in range(len(roles)))  # back to the roles' order
            free = self.capacity - resident
            calls, peak = [], 0.0
            for role, opt in zip(roles, combo):
                for stage, kind, alts in opt.calls:
                    if kind == "generate":
                        costs = [c for c in (self._gen_cost(role, n, lay, free) for lay in alts) if c is not None]
                        cost = min(costs, key=lambda c: c.time) if costs else None
                    else:
                        cost = next((v for v in alts if v.transient <= free), None)
                    if cost is None:  # excluded by the transient bound above; kept as a guard
                        break
                    calls.append(CallPlan(stage, role, kind, cost.time, cost.note))
                    peak = max(peak, cost.transient)
                else:
                    continue
                break
            else:
                total = sum(c.time for c in calls)
                if total < best_total:
                    best_total = total
                    calls.sort(key=lambda c: self._stage_rank[c.stage])
                    best = GroupPlan(roles, n, tuple(o.strategy for o in combo), tuple(calls), resident,
                                     resident + peak)
        if best is None:
            self._deficit[(roles, n)] = self._min_need(per_role) - self.capacity
        return best

    @staticmethod
    def _min_need(per_role: list[list[_Option]]) -> float:
        """Least peak bytes per device over all combinations (resident sum + largest transient)."""
        front = [(0.0, 0.0)]
        for opts in per_role:
            grown = sorted((mem + o.resident, max(need, o.min_transient)) for mem, need in front for o in opts)
            front, best_need = [], math.inf
            for mem, need in grown:  # 2-D Pareto front: increasing memory, strictly decreasing transient
                if need < best_need:
                    front.append((mem, need))
                    best_need = need
        return min(mem + need for mem, need in front)

    # ---- whole cluster --------------------------------------------------------------------------------------
    def best_mapping(self, placement: tuple[tuple[str, ...], ...]) -> tuple[Mapping | None, int]:
        """The fastest split of the cluster for one placement, and how many splits were scored."""
        N, U = self.cluster.num_devices, self.cluster.devices_per_node
        sizes = group_sizes(N, U)
        feasible = [[n for n in sizes if self.group(g, n) is not None] for g in placement]
        if not all(feasible):
            return None, 0
        stages = [s.name for s in self.dataflow.stages]
        best, best_time, scored = None, math.inf, 0
        for split in device_splits(N, feasible):
            scored += 1
            groups = [self.group(g, n) for g, n in zip(placement, split)]
            stage_times = tuple((s, max(g.stage_time(s) for g in groups)) for s in stages)
            total = sum(t for _, t in stage_times)
            if total < best_time:
                best_time = total
                best = Mapping(tuple(groups), stage_times, self.workload.tokens)
        return best, scored

    def reach(self, role: str) -> int | None:
        """The most devices one model can run on alone (None: none). Below N when no allowed strategy uses them
        all: data-parallel replicas are capped at the sequences per step, so with tensor and pipeline
        parallelism off, 64 sequences cannot keep 128 devices busy."""
        usable = [n for n in group_sizes(self.cluster.num_devices, self.cluster.devices_per_node)
                  if self.options(role, n)]
        return max(usable, default=None)

    def deficit(self, roles: tuple[str, ...], n: int) -> float:
        """Bytes per device missing for the group at n devices (0 if it fits)."""
        return 0.0 if self.group(roles, n) is not None else self._deficit.get((roles, n), math.inf)


def search(models: dict[str, ModelSpec], dataflow: Dataflow, workload: Workload, cluster: ClusterSpec,
           space: SearchSpace | None = None) -> Plan:
    """Run the auto-mapping search; raises PlanError (with the missing memory) when nothing fits."""
    space = space or SearchSpace()
    missing = [r for r in dataflow.roles if r not in models]
    if missing:
        raise ValueError(f"plan: the dataflow {dataflow.name!r} calls roles {missing} that have no model "
                         f"(models given: {sorted(models)})")
    start = time.perf_counter()
    s = _Search(models, dataflow, workload, cluster, space)
    roles, N = dataflow.roles, cluster.num_devices
    reach = {role: s.reach(role) for role in roles}
    for role, n in reach.items():  # a model that does not fit even alone on all the devices it can use: name it
        if n is None:
            raise PlanError(f"plan: the search space allows no strategy for model {role!r} ({_describe(models[role])}) "
                            f"on any group of {cluster}: {space}")
        if s.group((role,), n) is None:
            raise PlanError(_missing_message(f"model {role!r} ({_describe(models[role])}) does", s.deficit((role,), n),
                                             cluster, n))
    candidates, scored = [], 0
    for placement in set_partitions(roles):
        mapping, n_scored = s.best_mapping(placement)
        scored += n_scored
        if mapping is not None:
            candidates.append(mapping)
    if not candidates and all(n == N for n in reach.values()):
        raise PlanError(_missing_message(f"the models {list(roles)} together do", s.deficit(roles, N), cluster, N))
    if not candidates:
        raise PlanError(_idle_message(reach, workload, cluster))
    candidates.sort(key=lambda m: m.iteration_time)
    colocated = next((m for m in candidates if len(m.groups) == 1), None)
    return Plan(candidates[0], candidates, colocated, dict(models), dataflow, workload, cluster, space,
                time.perf_counter() - start, scored)


def _describe(model: ModelSpec) -> str:
    return f"{model.name}, {model.num_params / 1e9:.2f}B params" if model.num_params >= 1e8 else \
        f"{model.name}, {model.num_params / 1e6:.2f}M params"


def _missing_message(what: str, per_device: float, cluster: ClusterSpec, devices: int) -> str:
    dev, N = cluster.device, cluster.num_devices
    cap = dev.usable_memory
    over = f"all {N} devices" if devices == N else f"the {devices} devices it can use at most"
    return (f"{what} not fit on {N} x {dev.name}: even with every state sharded over {over} it "
            f"needs {(cap + per_device) / GiB:.1f} GiB per device, but a device offers {cap / GiB:.1f} GiB "
            f"({dev.usable_memory_fraction:.0%} of {dev.memory / GiB:.1f} GiB): {per_device / GiB:.1f} GiB per device "
            f"({per_device * devices / GiB:.1f} GiB in total) missing. Add devices, use devices with more memory, "
            f"or smaller models.")


def _idle_message(reach: dict[str, int], workload: Workload, cluster: ClusterSpec) -> str:
    """Why no placement uses the whole cluster when memory is not the reason: too few sequences to share out."""
    most = ", ".join(f"{role} {n}" for role, n in reach.items())
    return (f"no placement of the models {list(reach)} keeps all {cluster.num_devices} x {cluster.device.name} "
            f"busy: with {workload.sequences} sequences per step (at most one data-parallel replica per sequence) "
            f"and the tensor/pipeline sizes the search space allows, the most devices each model can use is: "
            f"{most}. Plan for fewer devices, more sequences per step (prompts x samples per prompt), or a "
            f"SearchSpace with tensor/pipeline parallelism.")
