"""What an algorithm is, the facts it declares about itself, and how rlkit finds one by name.

An algorithm is a small object with a few hooks over the Session's stages
(HybridFlow's claim: PPO, ReMax and Safe-RLHF differ by a few lines):

    spec                                     # AlgorithmSpec: the facts below, declared once
    generate(stages, prompts) -> Batch       # optional: rollouts (ReMax adds a greedy one)
    prepare(stages, batch)    -> Batch       # scores, log-probs, values, advantages
    actor_loss                               # picklable loss_fn(outputs, mb, global_tokens, global_seqs)
    after_learn(stages, batch, stats) -> dict  # optional: controllers (adaptive KL, Lagrange multiplier)

`spec` is what every other part reads: the Session builds the worker roles it
asks for, `Config.validate()` checks the config against it (`config_problems`),
and the planner plans the dataflow it describes. No table elsewhere repeats it.
`stages` is the Session; the methods algorithms may call on it are listed in
`Stages` below, so an algorithm never touches worker code.

Lookup: `get_algorithm("grpo", cfg)` imports `rlkit.algos.grpo` and calls the
`ALGORITHM` factory it defines (no chain of `elif` over names): every module of
this package that defines `ALGORITHM` is a built-in algorithm. A user can pass an
algorithm object instead of a name, or `register_algorithm(name, factory)` one
defined in a notebook cell.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # import cycles: the config and batch are data, not behaviour
    from rlkit.batch import Batch
    from rlkit.config import Config

KL_PLACES = ("loss", "reward")


@dataclass(frozen=True)
class AlgorithmSpec:
    """The facts about one algorithm that the Session, the config checks and the planner read."""

    needs_critic: bool = False
    """A value model is built and trained (PPO)."""
    needs_reference: bool = False
    """A frozen reference policy is built for the KL term (usually `algo.kl_coef > 0`)."""
    group_relative: bool = False
    """Advantages compare the samples of one prompt with each other: needs `rollout.n >= 2`."""
    kl_in: Literal["loss", "reward"] | None = None
    """Where the KL to the reference goes: a loss term ("loss"), subtracted from the rewards ("reward"),
    or nowhere (None, no reference model)."""
    greedy_baseline: bool = False
    """`generate` adds one greedy response per prompt as the baseline (ReMax)."""
    needs_costs: bool = False
    """`score` must also give `costs` (a cost rule or `model.cost_model_path`): Safe-RLHF."""
    learn_fields: tuple[str, ...] = ("advantages", "old_logprobs")
    """Batch fields `learn` reads (`old_logprobs` may be absent under `actor.skip_old_logprobs`)."""

    def __post_init__(self):
        if self.kl_in not in (*KL_PLACES, None):
            raise ValueError(f"AlgorithmSpec.kl_in = {self.kl_in!r}: must be one of {KL_PLACES} or None")
        if self.kl_in is not None and not self.needs_reference:
            raise ValueError(f"AlgorithmSpec.kl_in = {self.kl_in!r} needs needs_reference=True (the KL is to it)")

    @property
    def prepare_fields(self) -> tuple[str, ...]:
        """The fields `prepare` computes on the workers and the reward rule (for `Stages.compute`)."""
        fields = ["scores", "old_logprobs"]
        if self.needs_reference:
            fields.append("ref_logprobs")
        if self.needs_critic:
            fields.append("values")
        return tuple(fields)

    @property
    def reads_old_logprobs_in_prepare(self) -> bool:
        """The KL penalty in the reward reads `old_logprobs` while preparing: they cannot be skipped."""
        return self.kl_in == "reward"


def kl_spec(cfg: "Config", *, default_in: Literal["loss", "reward"] = "loss") -> dict[str, Any]:
    """`needs_reference` and `kl_in` of an algorithm whose KL term follows `algo.kl_coef` / `algo.kl_in_reward`:
    no reference model when `kl_coef == 0`; the KL goes to the reward when `algo.kl_in_reward` (or when the
    algorithm's own `default_in` is "reward": PPO, REINFORCE++)."""
    if cfg.algo.kl_coef <= 0:
        return {"needs_reference": False, "kl_in": None}
    return {"needs_reference": True, "kl_in": "reward" if cfg.algo.kl_in_reward else default_in}


class Stages(Protocol):
    """The Session's primitives an algorithm composes (each runs on the worker groups)."""

    cfg: "Config"

    def rollout(self, prompts: "Batch", *, n: int | None = None, greedy: bool = False) -> "Batch":
        """Sample `n` responses per prompt (greedy: one deterministic response per prompt)."""

    def next_prompts(self) -> "Batch":
        """The next `rollout.prompts_per_step` prompts of the training set (DAPO's refills)."""

    def compute(self, batch: "Batch", *fields: str) -> "Batch":
        """`batch` with `fields` ("scores", "old_logprobs", "ref_logprobs", "values") computed: the
        independent worker calls are submitted together and joined (they run side by side when their
        roles live on different devices)."""

    def score(self, batch: "Batch") -> "Batch":
        """`scores` (B,) and, when a cost function/model is configured, `costs` (B,)."""

    def compute_old_logprobs(self, batch: "Batch", *, force: bool = False) -> "Batch":
        """`old_logprobs` (B, T) under the current policy (skipped under `actor.skip_old_logprobs` unless `force`)."""

    def compute_ref_logprobs(self, batch: "Batch") -> "Batch":
        """`ref_logprobs` (B, T) under the frozen reference policy."""

    def compute_values(self, batch: "Batch") -> "Batch":
        """`values` (B, T) from the critic."""


@runtime_checkable
class Algorithm(Protocol):
    name: str
    spec: AlgorithmSpec

    def prepare(self, stages: Stages, batch: "Batch") -> "Batch": ...

    def actor_loss(self, outputs: dict, mb: "Batch", global_tokens: float, global_seqs: float) -> tuple[Any, dict]: ...

    # Optional hooks (the Session checks with getattr):
    #   generate(stages, prompts) -> Batch          default: stages.rollout(prompts)
    #   after_learn(stages, batch, stats) -> dict   default: nothing to update
    #   state_dict() -> dict / load_state_dict(d)   state that changes as the run trains (a KL coefficient, a
    #                                               multiplier), kept in run checkpoints; default: none


AlgorithmFactory = Callable[["Config"], Algorithm]
_REGISTRY: dict[str, AlgorithmFactory] = {}


@functools.cache
def builtin_algorithms() -> tuple[str, ...]:
    """Module names of this package that define `ALGORITHM` (found by importing them, not by a list)."""
    import rlkit.algos as package

    names = []
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg and hasattr(importlib.import_module(f"rlkit.algos.{info.name}"), "ALGORITHM"):
            names.append(info.name)
    return tuple(sorted(names))


def register_algorithm(name: str, factory: AlgorithmFactory) -> None:
    """Make `Config(algo.name=name)` build `factory(cfg)` (for algorithms written outside the package)."""
    _REGISTRY[name] = factory


def available_algorithms() -> list[str]:
    return sorted(set(builtin_algorithms()) | set(_REGISTRY))


def unknown_algorithm_message(name: str) -> str:
    close = name.replace("-", "_")
    hint = f" (did you mean {close!r}?)" if close != name and close in available_algorithms() else ""
    return (f"algo.name = {name!r}: unknown algorithm{hint}; available: {', '.join(available_algorithms())} "
            "(or register_algorithm(name, factory) for your own)")


def spec_of(algo: Any) -> AlgorithmSpec:
    """The algorithm's `spec`. An object written before specs existed (flags `uses_critic` /
    `uses_reference`) gets the spec those flags describe, with a KL loss term when it has a reference."""
    spec = getattr(algo, "spec", None)
    if isinstance(spec, AlgorithmSpec):
        return spec
    if spec is not None:
        raise TypeError(f"algorithm {type(algo).__name__}: spec must be an rlkit.algos.base.AlgorithmSpec, "
                        f"got {type(spec).__name__}")
    reference = bool(getattr(algo, "uses_reference", False))
    return AlgorithmSpec(needs_critic=bool(getattr(algo, "uses_critic", False)), needs_reference=reference,
                         kl_in="loss" if reference else None)


def get_algorithm(name_or_algo: "str | Algorithm", cfg: "Config") -> Algorithm:
    """The algorithm object for `cfg`: a registered/builtin name, or an object passed through."""
    if not isinstance(name_or_algo, str):
        missing = [hook for hook in ("prepare", "actor_loss") if not hasattr(name_or_algo, hook)]
        if missing:
            raise TypeError(
                f"algorithm object {type(name_or_algo).__name__} lacks {', '.join(missing)}; "
                "see rlkit.algos.base.Algorithm for the hooks an algorithm defines"
            )
        spec_of(name_or_algo)  # a malformed spec fails here, before any worker starts
        return name_or_algo
    name = name_or_algo
    if name not in _REGISTRY:
        if name not in builtin_algorithms():
            raise ValueError(unknown_algorithm_message(name))
        _REGISTRY[name] = importlib.import_module(f"rlkit.algos.{name}").ALGORITHM
    algo = _REGISTRY[name](cfg)
    spec_of(algo)
    return algo


def spec_problems(spec: AlgorithmSpec, cfg: "Config", name: str) -> list[str]:
    """What in `cfg` contradicts `spec`, as `field = value: rule` messages (empty: nothing)."""
    problems = []
    if spec.group_relative and cfg.rollout.n < 2:
        problems.append(f"rollout.n = {cfg.rollout.n}: must be >= 2 for algo.name = {name!r} "
                        "(its advantages are relative to the group of samples of one prompt)")
    return problems


def config_problems(cfg: "Config") -> list[str]:
    """`Config.validate()`'s algorithm checks: the name is known, the config meets its spec, and its actor loss
    applies the rollout correction the config asks for (`algo.rollout_is` / `algo.rollout_mask`)."""
    name = cfg.algo.name
    try:
        algo = get_algorithm(name, cfg)
    except ValueError as err:
        if name not in available_algorithms():
            return [unknown_algorithm_message(name)]
        return [f"algo.name = {name!r}: the algorithm rejects this config: {err}"]
    from rlkit.algos.rollout_correction import correction_problems  # torch: not at `import rlkit.config` time

    return (spec_problems(spec_of(algo), cfg, name) + correction_problems(algo, cfg, name)
            + pipeline_problems(algo, cfg, name))


def pipeline_problems(algo: Any, cfg: "Config", name: str) -> list[str]:
    """`rollout.async_steps >= 1` generates on the rollout pool with plain sampling (`rlkit.pipeline`): an
    algorithm with its own `generate` stage (ReMax's greedy baseline, DAPO's scoring and refills) is refused."""
    if cfg.rollout.async_steps and getattr(algo, "generate", None) is not None:
        return [f"rollout.async_steps = {cfg.rollout.async_steps}: algo.name = {name!r} has its own generate stage, "
                "which the asynchronous pipeline does not run (it samples plain rollouts on the rollout pool); "
                "use rollout.async_steps = 0 with this algorithm"]
    return []
