"""Transfer protocols: how one call on a worker group becomes one call per rank, and back.

A role method declares its protocol with `@register("split" | "broadcast" | "rank0")`.
The driver side of a protocol is two pure functions, independent of the backend:

- `dispatch(...)` turns the driver's `(args, kwargs)` into one `(args, kwargs)` per rank;
- `collect(...)` turns the per-rank results (in rank order) into the driver's result.

`split` splits the first Batch argument over the data-parallel ranks with
`Batch.split(world_size)` (which pads to a multiple of the world size), and collects
Batch results with `Batch.concat` + `unpad`. Everything else is passed to or returned
from every rank unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

Protocol = Literal["split", "broadcast", "rank0"]
PROTOCOLS: tuple[str, ...] = ("split", "broadcast", "rank0")

# Attribute set on a decorated function; the worker group reads it to expose the method.
_PROTOCOL_ATTR = "__rlkit_protocol__"


def register(protocol: Protocol) -> Callable[[Callable], Callable]:
    """Expose a role method on its worker group with a transfer protocol.

    ```python
    class Policy:
        def __init__(self, ctx: WorkerContext, lr: float): ...

        @register("split")
        def compute_logprobs(self, batch: Batch) -> Batch: ...
    ```
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"register(protocol={protocol!r}): protocol must be one of {', '.join(PROTOCOLS)}")

    def mark(fn: Callable) -> Callable:
        if not callable(fn):
            raise TypeError(f"@register({protocol!r}) decorates a method, got {fn!r}")
        setattr(fn, _PROTOCOL_ATTR, protocol)
        return fn

    return mark


def registered_methods(cls: type) -> dict[str, str]:
    """`{method name: protocol}` for every `@register`-ed method of a role class (inherited ones too)."""
    found: dict[str, str] = {}
    for name in dir(cls):
        if name.startswith("__"):
            continue
        protocol = getattr(getattr(cls, name, None), _PROTOCOL_ATTR, None)
        if protocol is not None:
            found[name] = protocol
    return found


def is_batch(obj: Any) -> bool:
    """True for an `rlkit.batch.Batch` (duck-typed on its split/unpad/concat, so a stand-in works too).

    `torch.Tensor` has a `split` method but no `unpad`/`concat`, so tensors are not batches.
    """
    return callable(getattr(obj, "split", None)) and callable(getattr(obj, "unpad", None)) and callable(
        getattr(type(obj), "concat", None)
    )


@dataclass(frozen=True)
class SplitPlan:
    """What `dispatch` did, so that `collect` can undo it."""

    pad: int
    """How many padding rows `Batch.split` appended to reach a multiple of the world size."""
    part_sizes: tuple[int, ...]
    """Rows sent to each rank (padding included), in rank order."""


def dispatch(
    protocol: str, args: tuple, kwargs: dict, world_size: int, where: str
) -> tuple[list[tuple[tuple, dict]], SplitPlan | None]:
    """Per-rank `(args, kwargs)` for one call; `where` names the method in errors (`"actor.update"`)."""
    if protocol in ("broadcast", "rank0"):
        return [(args, kwargs)] * world_size, None
    if protocol != "split":
        raise ValueError(f"{where}: unknown protocol {protocol!r}")

    # The first Batch argument, positional first, then keyword in the order given.
    key: int | str | None = next((i for i, a in enumerate(args) if is_batch(a)), None)
    if key is None:
        key = next((k for k, v in kwargs.items() if is_batch(v)), None)
    if key is None:
        raise TypeError(f"{where} is registered with protocol 'split' but was called without a Batch argument")
    batch = args[key] if isinstance(key, int) else kwargs[key]
    if len(batch) == 0:
        raise ValueError(f"{where}: cannot split an empty Batch over {world_size} rank(s)")

    parts, pad = batch.split(world_size)
    if len(parts) != world_size:
        raise RuntimeError(f"{where}: Batch.split({world_size}) returned {len(parts)} parts")
    per_rank = []
    for part in parts:
        if isinstance(key, int):
            per_rank.append((args[:key] + (part,) + args[key + 1 :], kwargs))
        else:
            per_rank.append((args, {**kwargs, key: part}))
    return per_rank, SplitPlan(pad=pad, part_sizes=tuple(len(p) for p in parts))


def collect(protocol: str, results: list, plan: SplitPlan | None, where: str) -> Any:
    """The driver's result from the per-rank results (in rank order)."""
    if protocol == "rank0":
        return results[0]
    if protocol == "broadcast":
        return list(results)
    if not all(is_batch(r) for r in results):
        return list(results)

    # A rank may return k rows per input row (e.g. k samples per prompt, expanded in
    # order); the padding rows are then the last k * pad rows of the last rank.
    ratios = {len(r) / n for r, n in zip(results, plan.part_sizes)}
    if len(ratios) != 1 or not float(next(iter(ratios))).is_integer():
        sizes = ", ".join(f"rank {i}: {n} in -> {len(r)} out" for i, (r, n) in enumerate(zip(results, plan.part_sizes)))
        raise ValueError(
            f"{where}: a 'split' method must return the same whole number of rows per input row on every "
            f"rank so that padding can be dropped; got {sizes}"
        )
    k = int(next(iter(ratios)))
    merged = type(results[0]).concat(results)
    return merged.unpad(plan.pad * k) if plan.pad * k else merged
