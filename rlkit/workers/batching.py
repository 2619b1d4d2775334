"""Pure helpers that turn a `Batch` into model inputs, micro-batches and mini-batches.

No torch.distributed here: the driver uses `interleave_minibatches`, the workers
use the rest.

Mini-batches and ranks. The `split` protocol sends rank r the contiguous rows
`[r * n/W, (r+1) * n/W)` of a batch of n rows. A worker forms its mini-batches
from its shard in order: mini-batch k on rank r is rows `[k*m, (k+1)*m)` of the
shard, with `m = mini_batch_size / W` (the global mini-batch size divided by the
number of ranks). For an optimizer step to see the same samples whatever W is,
the driver reorders the batch first with `interleave_minibatches`, so that those
rows are exactly the r-th part of global mini-batch k (rows `[k*M, (k+1)*M)` of
the original batch, M = mini_batch_size). With W = 1 the order is unchanged.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

from rlkit.batch import Batch


def minibatch_order(num_rows: int, world_size: int, mini_batch_size: int) -> list[int]:
    """Row order that makes contiguous rank shards hold the rank's part of each global mini-batch.

    Global mini-batch k = rows `[k*M, (k+1)*M)`; its r-th part (M/W rows) goes to rank r.
    The result lists, for rank 0 then rank 1 ..., the parts of mini-batch 0, 1, ...
    """
    _check_minibatch_layout(num_rows, world_size, mini_batch_size)
    per_rank = mini_batch_size // world_size
    order = []
    for rank in range(world_size):
        for k in range(num_rows // mini_batch_size):
            start = k * mini_batch_size + rank * per_rank
            order.extend(range(start, start + per_rank))
    return order


def interleave_minibatches(batch: Batch, world_size: int, mini_batch_size: int) -> Batch:
    """Reorder `batch` (driver side) so a `split` call gives every rank its share of each mini-batch.

    Call it just before `group.actor.update(...)` / `group.critic.update(...)` with the
    group's world size and the global mini-batch size the update uses.
    """
    return batch.select(minibatch_order(len(batch), world_size, mini_batch_size))


def balance_minibatch_tokens(batch: Batch, world_size: int, mini_batch_size: int) -> Batch:
    """Reorder the rows inside each global mini-batch (rows `[k*M, (k+1)*M)`) so that its W contiguous
    equal shares hold about the same number of tokens (`rlkit.workers.packing.balanced_rank_order`). Every
    optimizer step keeps the same rows, so the update is the same to float rounding; call it before
    `interleave_minibatches` (token-budget micro-batches: a rank with the long rows would run more of
    them while the others wait at each collective)."""
    from rlkit.workers.packing import balanced_rank_order, row_token_counts

    _check_minibatch_layout(len(batch), world_size, mini_batch_size)
    lengths = row_token_counts(batch).tolist()
    order: list[int] = []
    for start in range(0, len(batch), mini_batch_size):
        rows = list(range(start, start + mini_batch_size))
        order.extend(rows[j] for j in balanced_rank_order([lengths[i] for i in rows], world_size))
    return batch.select(order)


def _check_minibatch_layout(num_rows: int, world_size: int, mini_batch_size: int) -> None:
    if mini_batch_size <= 0 or mini_batch_size % world_size:
        raise ValueError(
            f"mini_batch_size={mini_batch_size} must be a positive multiple of the number of ranks ({world_size}): "
            "every rank takes the same share of each optimizer step"
        )
    if num_rows % mini_batch_size:
        raise ValueError(
            f"a batch of {num_rows} rows does not divide into mini-batches of {mini_batch_size}: "
            "choose mini_batch_size (actor.mini_batch_size) as a divisor of the rows per step"
        )


def local_minibatch_size(mini_batch_size: int | None, world_size: int, shard_rows: int) -> int:
    """Rows per optimizer step on one rank: the global mini-batch size / W (whole shard when None)."""
    if mini_batch_size is None:
        return shard_rows
    if mini_batch_size <= 0 or mini_batch_size % world_size:
        raise ValueError(
            f"mini_batch_size={mini_batch_size} must be a positive multiple of the number of ranks ({world_size})"
        )
    return mini_batch_size // world_size


def chunks(batch: Batch, size: int) -> Iterator[Batch]:
    """Consecutive row slices of `size` rows (the last one may be shorter)."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    for start in range(0, len(batch), size):
        yield batch[start : start + size]


def require_fields(batch: Batch, names: tuple[str, ...], where: str) -> None:
    """Raise a ValueError naming `where` and every missing field."""
    missing = [name for name in names if getattr(batch, name, None) is None]
    if missing:
        raise ValueError(f"{where}: the Batch has no {', '.join(missing)} (fields set: {batch.present_fields()})")


def sequence_inputs(batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Model inputs for `prompt + response` with all-padding columns trimmed.

    Returns `input_ids`, `attention_mask`, `position_ids` (all (b, P' + T')) and P',
    the trimmed prompt length: response token t sits at column `P' + t` and is
    predicted from column `P' + t - 1`. Columns that are padding in every row (the
    left end of the prompts, the right end of the responses) are dropped so a
    micro-batch of short sequences costs less; `pad_response` restores width T.
    Positions count real tokens only, as generation does with left padding.
    """
    require_fields(batch, ("prompt_ids", "response_ids"), "sequence_inputs")
    prompt_ids, response_ids = batch.prompt_ids, batch.response_ids
    prompt_mask = batch.prompt_mask if batch.prompt_mask is not None else torch.ones_like(prompt_ids)
    response_mask = batch.response_mask if batch.response_mask is not None else torch.ones_like(response_ids)

    used_prompt = prompt_mask.bool().any(0).nonzero()
    first = int(used_prompt[0]) if len(used_prompt) else prompt_ids.shape[1] - 1
    first = min(first, prompt_ids.shape[1] - 1)  # keep at least one prompt column: it predicts token 0
    used_response = response_mask.bool().any(0).nonzero()
    last = int(used_response[-1]) + 1 if len(used_response) else 1

    ids = torch.cat([prompt_ids[:, first:], response_ids[:, :last]], dim=1)  # (b, P' + T')
    mask = torch.cat([prompt_mask[:, first:], response_mask[:, :last]], dim=1).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.long(), mask, positions, prompt_ids.shape[1] - first


def pad_response(x: torch.Tensor, width: int) -> torch.Tensor:
    """Right-pad a (b, T') per-response-token tensor with zeros to (b, width)."""
    return F.pad(x, (0, width - x.shape[1])) if x.shape[1] < width else x


def last_token_index(batch: Batch, prompt_len: int) -> torch.Tensor:
    """(b,) column of each row's last real token in `sequence_inputs` (its last response token,
    or its last prompt token when the response is empty)."""
    lengths = batch.response_mask.long().sum(-1) if batch.response_mask is not None else torch.full(
        (len(batch),), batch.response_ids.shape[1]
    )
    return prompt_len - 1 + lengths


def count_tokens_and_seqs(batch: Batch) -> tuple[float, float]:
    """Trained response tokens (`policy_mask()`: the policy's own in a multi-turn batch) and rows with at least
    one of them (padding rows count for neither)."""
    mask = batch.policy_mask()
    return float(mask.sum()), float((mask.sum(-1) > 0).sum())


__all__ = [
    "minibatch_order",
    "interleave_minibatches",
    "balance_minibatch_tokens",
    "local_minibatch_size",
    "chunks",
    "require_fields",
    "sequence_inputs",
    "pad_response",
    "last_token_index",
    "count_tokens_and_seqs",
]


def mean_padded_length(batch: Batch) -> float:
    """Mean sequence length the forward runs over after trimming (for the FLOP count)."""
    ids, _, _, _ = sequence_inputs(batch)
    return float(ids.shape[1])
