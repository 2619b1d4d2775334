"""Padding removal and token-budget micro-batches: pure functions, no torch.distributed.

Packing. A micro-batch of b rows (left-padded prompts, right-padded responses) becomes ONE row of
N = sum of the rows' real tokens, each sequence with its own positions 0..len-1 and no attention mask.
transformers then builds a block-diagonal causal mask from the position resets
(`masking_utils.find_packed_sequence_indices`; flash-attention 2 runs it as variable-length
attention), so no token attends across sequences and no padding token is computed. The outputs the
roles need (a log-prob or a value per response token, read at the position that predicts it) are
gathered back into the padded (b, T) layout with `PackedInputs.predict_index`.

Token budgets. Instead of `micro_batch_size` rows, a micro-batch holds as many rows as fit in
`max_tokens` tokens: the padded rectangle (rows x longest row) without packing, the real tokens with
it. Rows are taken longest first, so rows of similar length share a micro-batch and little is padded.
The losses are normalised by global token counts (`rlkit.workers.train_step`), so how the rows are
grouped changes only the float summation order, never the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlkit.batch import Batch


@dataclass
class PackedInputs:
    """One packed row holding every sequence of a micro-batch (see the module docstring)."""

    input_ids: torch.Tensor
    """(1, N) the real tokens of every row, prompt then response, row after row."""
    position_ids: torch.Tensor
    """(1, N) positions restarting at 0 at each row: what tells the attention where a sequence starts."""
    predict_index: torch.Tensor
    """(b, T') column of the packed row whose output predicts response token t of row i (T' = the longest
    response); 0 where row i has no token t (read, then masked by `valid`)."""
    targets: torch.Tensor
    """(b, T') response token ids (0 on padding)."""
    valid: torch.Tensor
    """(b, T') bool: response token t of row i exists."""


def row_token_counts(batch: Batch) -> torch.Tensor:
    """(B,) real prompt + response tokens of each row."""
    prompt = batch.prompt_mask.sum(-1) if batch.prompt_mask is not None else torch.full(
        (len(batch),), batch.prompt_ids.shape[1])
    response = batch.response_mask.sum(-1) if batch.response_mask is not None else torch.full(
        (len(batch),), batch.response_ids.shape[1])
    return (prompt + response).long()


def pack_sequences(batch: Batch) -> PackedInputs:
    """`batch`'s rows as one packed row (see `PackedInputs`). Every row needs at least one prompt token
    (it predicts response token 0)."""
    prompt_mask = (batch.prompt_mask if batch.prompt_mask is not None else torch.ones_like(batch.prompt_ids)).bool()
    response_mask = (batch.response_mask if batch.response_mask is not None
                     else torch.ones_like(batch.response_ids)).bool()
    prompt_lens = prompt_mask.sum(-1)  # (b,)
    response_lens = response_mask.sum(-1)  # (b,)
    if bool((prompt_lens == 0).any()):
        row = int((prompt_lens == 0).nonzero()[0])
        raise ValueError(f"pack_sequences: row {row} has no prompt token (nothing predicts its first response token)")
    width = max(int(response_lens.max()) if len(batch) else 0, 1)
    ids, positions = [], []
    predict = torch.zeros((len(batch), width), dtype=torch.long)
    offset = 0
    for i in range(len(batch)):
        # Valid tokens in order: the prompt's are at the right end of its row, the response's at the left.
        row = torch.cat([batch.prompt_ids[i][prompt_mask[i]], batch.response_ids[i][response_mask[i]]])
        ids.append(row)
        positions.append(torch.arange(len(row)))
        p, r = int(prompt_lens[i]), int(response_lens[i])
        predict[i, :r] = offset + p - 1 + torch.arange(r)  # position p-1+t predicts response token t
        offset += len(row)
    targets = batch.response_ids[:, :width].long() if batch.response_ids.shape[1] >= width else \
        torch.nn.functional.pad(batch.response_ids.long(), (0, width - batch.response_ids.shape[1]))
    valid = response_mask[:, :width] if response_mask.shape[1] >= width else \
        torch.nn.functional.pad(response_mask, (0, width - response_mask.shape[1]))
    return PackedInputs(input_ids=torch.cat(ids).long()[None], position_ids=torch.cat(positions)[None],
                        predict_index=predict, targets=torch.where(valid, targets, 0), valid=valid)


def micro_batch_cost(lengths: list[int], *, packed: bool) -> int:
    """Tokens a forward over rows of these lengths computes: their sum packed, rows x longest padded."""
    if not lengths:
        return 0
    return sum(lengths) if packed else len(lengths) * max(lengths)


def plan_token_micro_batches(lengths: list[int], max_tokens: int, *, packed: bool, min_count: int = 1) -> list[list[int]]:
    """Row indices of each micro-batch: rows longest first, each micro-batch as many as fit in
    `max_tokens` (`micro_batch_cost`; a row longer than the budget is a micro-batch of its own), then the
    costliest micro-batches halved until there are at least `min_count` (ranks must run the same number of
    forward/backward passes: the caller passes the largest count over ranks). Deterministic."""
    if max_tokens <= 0:
        raise ValueError(f"plan_token_micro_batches: max_tokens = {max_tokens} must be > 0")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0  # real tokens in `current`; its first row is its longest (rows come longest first)
    for i in order:
        cost = used + lengths[i] if packed else (len(current) + 1) * (lengths[current[0]] if current else lengths[i])
        if current and cost > max_tokens:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        groups.append(current)
    if min_count > len(lengths):
        raise ValueError(f"plan_token_micro_batches: {min_count} micro-batches asked of {len(lengths)} rows")
    while len(groups) < min_count:
        # the costliest micro-batch with two rows or more (the first of equals) is halved
        k = max((k for k, g in enumerate(groups) if len(g) > 1),
                key=lambda k: (micro_batch_cost([lengths[j] for j in groups[k]], packed=packed), -k))
        worst = groups[k]
        half = (len(worst) + 1) // 2
        groups[k:k + 1] = [worst[:half], worst[half:]]
    return groups


def balanced_rank_order(lengths: list[int], world_size: int) -> list[int]:
    """A permutation of one mini-batch's rows such that its `world_size` contiguous equal shares (what each
    rank gets) hold about the same number of tokens: rows longest first, dealt in a snake (0, 1, ..., W-1,
    W-1, ..., 0), each rank's rows then laid out together. Every rank keeps the same number of rows."""
    n = len(lengths)
    if n % world_size:
        raise ValueError(f"balanced_rank_order: {n} rows do not split evenly over {world_size} ranks")
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for k, i in enumerate(order):
        lap, pos = divmod(k, world_size)
        shares[pos if lap % 2 == 0 else world_size - 1 - pos].append(i)
    return [i for share in shares for i in sorted(share)]


__all__ = ["PackedInputs", "pack_sequences", "row_token_counts", "micro_batch_cost", "plan_token_micro_batches",
           "balanced_rank_order"]
