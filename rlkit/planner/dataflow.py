"""RL dataflows as the planner sees them: stages of model calls.

A stage is a set of calls that may run at the same time (their inputs are ready
together); stages run one after another. PPO (paper Fig. 1):

    generate: actor generates
    prepare:  actor old log-probs, reference log-probs, critic values, reward scores
    train:    actor update, critic update

Other algorithms are other call lists, built by `rl_dataflow` from what they
need (no critic for GRPO/ReMax, a greedy baseline generation for ReMax, a cost
model for Safe-RLHF).
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("generate", "infer", "train")


@dataclass(frozen=True)
class Call:
    """One model call in a stage."""

    role: str
    """Model role name ("actor", "critic", "ref", "reward", "cost", ...)."""
    kind: str
    """"generate" (memory-bound decoding), "infer" (one forward over the batch) or "train" (updates)."""
    samples_per_prompt: int | None = None
    """Override of the workload's samples per prompt (ReMax's greedy baseline generates 1); None = the workload's."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Call({self.role!r}): kind must be one of {KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Stage:
    """Calls whose inputs are ready together."""

    name: str
    """Stage name shown in tables ("generate", "prepare", "train")."""
    calls: tuple[Call, ...]
    """The calls; within one colocated group they run one after another."""


@dataclass(frozen=True)
class Dataflow:
    """An RL algorithm's stages, in order."""

    name: str
    """Algorithm name."""
    stages: tuple[Stage, ...]
    """Stages in execution order."""

    @property
    def roles(self) -> tuple[str, ...]:
        """Model roles in order of first appearance."""
        seen: dict[str, None] = {}
        for stage in self.stages:
            for call in stage.calls:
                seen.setdefault(call.role, None)
        return tuple(seen)

    def calls_of(self, role: str) -> list[tuple[str, Call]]:
        """(stage name, call) pairs of one role."""
        return [(st.name, c) for st in self.stages for c in st.calls if c.role == role]

    def is_trained(self, role: str) -> bool:
        """Whether the role has a train call (and so keeps gradients and optimizer states)."""
        return any(c.kind == "train" for _, c in self.calls_of(role))


def rl_dataflow(name: str, *, critic: bool, reference: bool = True, reward_model: bool = True,
                cost_model: bool = False, greedy_baseline: bool = False) -> Dataflow:
    """The generate / prepare / train dataflow with the models an algorithm needs."""
    generate = [Call("actor", "generate")]
    if greedy_baseline:  # ReMax: one greedy response per prompt as the baseline
        generate.append(Call("actor", "generate", samples_per_prompt=1))
    prepare = [Call("actor", "infer")]
    if reference:
        prepare.append(Call("ref", "infer"))
    if critic:
        prepare.append(Call("critic", "infer"))
    if reward_model:
        prepare.append(Call("reward", "infer"))
    if cost_model:
        prepare.append(Call("cost", "infer"))
    train = [Call("actor", "train")] + ([Call("critic", "train")] if critic else [])
    return Dataflow(name, (Stage("generate", tuple(generate)), Stage("prepare", tuple(prepare)),
                           Stage("train", tuple(train))))


# The paper's dataflows (every model a network, a reward model included) for `plan(model, cluster)` and the
# paper study. A Config is planned from its algorithm's AlgorithmSpec instead (`api.config_dataflow`): rlkit's
# safe_rlhf, for one, trains no critic, unlike the paper's Safe-RLHF below.
PPO = rl_dataflow("ppo", critic=True)
REMAX = rl_dataflow("remax", critic=False, greedy_baseline=True)
GRPO = rl_dataflow("grpo", critic=False)
SAFE_RLHF = rl_dataflow("safe_rlhf", critic=True, cost_model=True)
