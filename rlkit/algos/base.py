"""What an algorithm is, and how rlkit finds one by name.

An algorithm is a small object with three hooks over the Session's stages
(HybridFlow's claim: PPO, ReMax and Safe-RLHF differ by a few lines):

    generate(stages, prompts) -> Batch      # rollouts (ReMax adds a greedy one)
    prepare(stages, batch)    -> Batch      # scores, log-probs, values, advantages
    actor_loss                               # picklable loss_fn(outputs, mb, global_tokens, global_seqs)
    after_learn(stages, batch, stats) -> dict  # controllers (adaptive KL, Lagrange multiplier)

plus the flags `uses_critic` / `uses_reference`, which tell the Session which
worker roles to build. `stages` is the Session; the methods algorithms may call on
it are listed in `Stages` below, so an algorithm never touches worker code.

Lookup: `get_algorithm("grpo", cfg)` imports `rlkit.algos.grpo` and calls the
`ALGORITHM` factory it defines (no chain of `elif` over names). A user can pass an
algorithm object instead of a name, or `register_algorithm(name, factory)` one
defined in a notebook cell.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

if TYPE_CHECKING:  # import cycles: the config and batch are data, not behaviour
    from rlkit.batch import Batch
    from rlkit.config import Config


class Stages(Protocol):
    """The Session's primitives an algorithm composes (each runs on the worker groups)."""

    cfg: "Config"

    def rollout(self, prompts: "Batch", *, n: int | None = None, greedy: bool = False) -> "Batch":
        """Sample `n` responses per prompt (greedy: one deterministic response per prompt)."""

    def next_prompts(self) -> "Batch":
        """The next `rollout.prompts_per_step` prompts of the training set (DAPO's refills)."""

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
    uses_critic: bool
    uses_reference: bool

    def prepare(self, stages: Stages, batch: "Batch") -> "Batch": ...

    def actor_loss(self, outputs: dict, mb: "Batch", global_tokens: float, global_seqs: float) -> tuple[Any, dict]: ...

    # Optional hooks (the Session checks with getattr):
    #   generate(stages, prompts) -> Batch          default: stages.rollout(prompts)
    #   after_learn(stages, batch, stats) -> dict   default: nothing to update


AlgorithmFactory = Callable[["Config"], Algorithm]
_REGISTRY: dict[str, AlgorithmFactory] = {}

# Names shipped with rlkit; each is a module `rlkit.algos.<name>` defining `ALGORITHM`.
BUILTIN = ("ppo", "grpo", "dr_grpo", "dapo", "gspo", "remax", "rloo", "reinforce_pp", "safe_rlhf")


def register_algorithm(name: str, factory: AlgorithmFactory) -> None:
    """Make `Config(algo.name=name)` build `factory(cfg)` (for algorithms written outside the package)."""
    _REGISTRY[name] = factory


def available_algorithms() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))


def get_algorithm(name_or_algo: "str | Algorithm", cfg: "Config") -> Algorithm:
    """The algorithm object for `cfg`: a registered/builtin name, or an object passed through."""
    if not isinstance(name_or_algo, str):
        missing = [hook for hook in ("prepare", "actor_loss") if not hasattr(name_or_algo, hook)]
        if missing:
            raise TypeError(
                f"algorithm object {type(name_or_algo).__name__} lacks {', '.join(missing)}; "
                "see rlkit.algos.base.Algorithm for the hooks an algorithm defines"
            )
        return name_or_algo
    name = name_or_algo
    if name not in _REGISTRY:
        if name not in BUILTIN:
            raise ValueError(
                f"algo.name = {name!r}: unknown algorithm; available: {', '.join(available_algorithms())} "
                "(or register_algorithm(name, factory) for your own)"
            )
        module = importlib.import_module(f"rlkit.algos.{name}")
        _REGISTRY[name] = module.ALGORITHM
    return _REGISTRY[name](cfg)
