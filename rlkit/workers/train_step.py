"""One optimizer step over a mini-batch, split in micro-batches, with globally normalised losses.

The contract with the algorithm (see `rlkit.algos.core.aggregate`):
`loss_fn(outputs, mb, global_tokens, global_seqs) -> (loss, metrics)` returns this
micro-batch's *share* of the mini-batch loss, i.e. its sum divided by the number of
valid tokens (or sequences) in the whole mini-batch over all ranks. Summing the
shares over micro-batches and ranks gives the mini-batch loss, whatever the number
of ranks or micro-batches, and so does the gradient:

- the worker all-reduces the token and sequence counts first (`global_counts`);
- each micro-batch's backward accumulates its share's gradient locally;
- FSDP2 reduce-scatters gradients with an AVERAGE over ranks (`ReduceOp.AVG` for fp32
  and bf16, see `torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py`), so the
  loss is multiplied by the world size before backward: the average of W scaled
  gradients is the gradient of the sum.

Metrics returned by `loss_fn` (means over the micro-batch's tokens, as the functions
of `rlkit.algos.core` return them) are weighted by the micro-batch's share of the
tokens and summed over ranks: the result is the token mean over the mini-batch.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from rlkit.batch import Batch
from rlkit.workers.batching import chunks, count_tokens_and_seqs, mean_padded_length
from rlkit.workers.optim import Optimizer
from rlkit.workers.packing import plan_token_micro_batches, row_token_counts

Outputs = dict[str, torch.Tensor]
LossFn = Callable[[Outputs, Batch, float, float], "tuple[torch.Tensor, dict]"]
ForwardFn = Callable[[Batch], Outputs]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a short list of floats over all ranks (one collective; float64 so counts stay exact)."""
    if not values:
        return []
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def global_counts(batch: Batch, device: torch.device) -> tuple[float, float]:
    """(valid response tokens, rows with at least one) summed over all ranks."""
    tokens, seqs = count_tokens_and_seqs(batch)
    tokens, seqs = all_reduce_sum([tokens, seqs], device)
    return tokens, seqs


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest `value` over all ranks (one collective)."""
    buf = torch.tensor([float(value)], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return int(buf.item())


def split_micro_batches(batch: Batch, rows: int, *, max_tokens: int = 0, packed: bool = False,
                        device: torch.device | None = None) -> list[tuple[list[int] | None, Batch]]:
    """This rank's micro-batches of `batch`: `(row indices, micro-batch)` pairs.

    max_tokens 0: consecutive slices of `rows` rows (indices None: in order). > 0: token-budget
    micro-batches (`rlkit.workers.packing.plan_token_micro_batches`), as many on every rank (the largest
    count over ranks: FSDP2 reduce-scatters gradients at every backward, so every rank must run the same
    number) — collective when max_tokens > 0."""
    if max_tokens <= 0:
        return [(None, mb) for mb in chunks(batch, rows)]
    lengths = row_token_counts(batch).tolist()
    local = plan_token_micro_batches(lengths, max_tokens, packed=packed)
    count = all_reduce_max(len(local), device or torch.device("cpu"))
    plan = local if count == len(local) else plan_token_micro_batches(lengths, max_tokens, packed=packed,
                                                                     min_count=count)
    return [(idx, batch.select(idx)) for idx in plan]


def _as_float(value, where: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{where}: metric must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach())
    return float(value)


def train_minibatch(
    optimizer: Optimizer,
    mini: Batch,
    *,
    micro_batch_size: int,
    forward: ForwardFn,
    loss_fn: LossFn,
    device: torch.device,
    where: str,
    metric_weight: str = "tokens",
    max_tokens: int = 0,
    packed: bool = False,
) -> dict[str, float]:
    """Forward/backward every micro-batch of `mini` (this rank's rows), then one optimizer step.
    Micro-batches: `micro_batch_size` rows, or (`max_tokens` > 0) token budgets (`split_micro_batches`).

    Collective: every rank must call it with the same number of micro-batches
    (the `split` protocol gives every rank the same number of rows).
    Returns the mini-batch `loss` (exactly the global value), metrics averaged over the
    mini-batch's tokens (`metric_weight="tokens"`) or sequences ("seqs"), `grad_norm`
    and `lr`, identical on every rank.
    """
    if metric_weight not in ("tokens", "seqs"):
        raise ValueError(f"{where}: metric_weight={metric_weight!r}; allowed 'tokens', 'seqs'")
    world = dist.get_world_size() if dist.is_initialized() else 1
    tokens, seqs = global_counts(mini, device)
    if tokens == 0:
        raise ValueError(
            f"{where}: response_mask is all zero over a whole mini-batch ({len(mini)} rows on this rank): "
            "there is no response token to train on. Check that responses are not empty and that "
            "response_mask marks the response tokens (1) and the padding (0)."
        )
    loss_sum = 0.0
    weighted: dict[str, float] = {}
    # Gradients accumulate over the micro-batches below: start from none, so an update that an exception or
    # an interrupt cut between two backwards (the local backend runs in the caller's process) never leaves
    # half-accumulated gradients that this update would add in.
    optimizer.zero_grad()
    for _, mb in split_micro_batches(mini, micro_batch_size, max_tokens=max_tokens, packed=packed, device=device):
        outputs = forward(mb)
        result = loss_fn(outputs, mb, tokens, seqs)
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor)):
            raise TypeError(
                f"{where}: loss_fn must return (loss tensor, metrics dict), got {type(result).__name__}"
            )
        loss, metrics = result
        (loss * world).backward()
        loss_sum += float(loss.detach())
        mb_tokens, mb_seqs = count_tokens_and_seqs(mb)
        share = mb_tokens / tokens if metric_weight == "tokens" else mb_seqs / seqs
        for key, value in (metrics or {}).items():
            weighted[key] = weighted.get(key, 0.0) + share * _as_float(value, f"{where}: metric {key!r}")
    keys = sorted(weighted)
    reduced = all_reduce_sum([loss_sum, *(weighted[k] for k in keys)], device)
    out = {"loss": reduced[0], **dict(zip(keys, reduced[1:]))}
    out.update(optimizer.step())
    out["tokens"] = tokens
    return out


def mean_of_steps(steps: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over optimizer steps (the last `lr`, summed `tokens`); `skipped` becomes the
    fraction of skipped steps, and `skipped_steps` counts them (`rlkit.nonfinite.check_update` reads it)."""
    if not steps:
        return {}
    out = {key: sum(s[key] for s in steps) / len(steps) for key in steps[0]}
    out["lr"] = steps[-1]["lr"]
    out["tokens"] = sum(s["tokens"] for s in steps)
    out["optimizer_steps"] = float(len(steps))
    if "skipped" in steps[0]:
        out["skipped_steps"] = float(sum(s["skipped"] for s in steps))
    return out


def train_epochs(
    role,
    batch: Batch,
    *,
    rows: int,
    micro_batch_size: int,
    epochs: int,
    forward: ForwardFn,
    loss_fn: LossFn,
    where: str,
    metric_weight: str = "tokens",
    max_tokens: int = 0,
    packed: bool = False,
) -> dict[str, float]:
    """`epochs` passes of optimizer steps over this rank's rows, `rows` per step: the update loop every
    trainable role (policy, critic, reward model) shares.

    `role` provides `model`, `optimizer`, `residency`, `stats` and `name`. Returns the metrics averaged
    over steps, prefixed `<name>/`, plus the call's time/memory/FLOP measurements.
    """
    steps = []
    with role.residency.on_device(), role.stats.measure("update", backward=True) as info:
        for _ in range(epochs):
            for mini in chunks(batch, rows):
                steps.append(
                    train_minibatch(
                        role.optimizer, mini, micro_batch_size=micro_batch_size, forward=forward,
                        loss_fn=loss_fn, device=role.model.device, where=where, metric_weight=metric_weight,
                        max_tokens=max_tokens, packed=packed,
                    )
                )
        info["tokens"] = batch.num_tokens() * epochs
        info["seq_len"] = mean_padded_length(batch)
    metrics = {f"{role.name}/{key}": value for key, value in mean_of_steps(steps).items()}
    return {**metrics, **info["stats"]}


__all__ = ["LossFn", "ForwardFn", "Outputs", "all_reduce_sum", "all_reduce_max", "split_micro_batches", "global_counts", "train_minibatch", "train_epochs", "mean_of_steps"]
