"""Log-probs and entropy straight from the final hidden states, `chunk_size` tokens at a time.

The output projection maps N hidden states (N, H) to logits (N, V); with V = 50k-150k
that float32 tensor, the softmax temporaries and what autograd keeps of them are the
largest memory of a policy step (N = 1024 tokens of a 49k vocabulary: 200 MB each).
`chunked_logprobs_entropy` materialises the logits of one chunk of tokens at a time, in
forward and in backward: backward recomputes each chunk's logits from the saved hidden
states, so what stays alive between forward and backward is O(N) (the hidden states, one
logsumexp and one entropy per token), and the extra memory is O(chunk_size * V).

Math, per token, with z = (h W^T + b) / tau, lse = logsumexp(z), p = softmax(z):

    logprob(t) = z_t - lse
    entropy    = -sum_j p_j log p_j,       log p_j = z_j - lse
    d logprob / d z_j = [j == t] - p_j
    d entropy / d z_j = -p_j (log p_j + entropy)

and d/d(hW^T + b) = (d/dz) / tau. Everything is computed in float32 whatever the dtype of
h and W (bf16 logits are too coarse for log-probs: PPO ratios are built from them); the
gradients come back in the dtypes of h and W.

This module is pure tensor code (no torch.distributed): the FSDP2 side, which must run
it inside the sharded root's forward, is `rlkit.workers.sharded.ShardedModel.token_logprobs`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

DEFAULT_CHUNK_SIZE = 0  # opt-in: see ActorConfig.logits_chunk_size
"""Tokens per chunk by default (`actor.logits_chunk_size`): one (256, V) float32 block is 50 MB at V = 49k, 156 MB
at V = 152k; forward holds about three such blocks at a time, backward two."""


_SLICE_ELEMENTS = 1 << 24
"""A bf16/fp16 weight is cast to float32 this many elements (64 MB) at a time, never whole: a float32 copy of a
(V, H) head (2.2 GB for V = 152k, H = 3584) can cost more than the logits it replaces at small micro-batches.
Not smaller: backward runs (slices x token chunks) blocks, each a handful of kernel launches on a GPU."""


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """float32, or float64 when an input is float64 (gradcheck): never below float32."""
    return torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)


def _spans(total: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _vocab_slices(weight: Tensor, dtype: torch.dtype) -> list[tuple[int, int]]:
    """Row ranges of W to use at a time: all of it when it is already in `dtype` (no copy), else slices."""
    vocab, hidden = weight.shape
    return [(0, vocab)] if weight.dtype == dtype else _spans(vocab, max(1, _SLICE_ELEMENTS // hidden))


def _logits_block(h: Tensor, weight: Tensor, bias: Tensor | None, rows: tuple[int, int], temperature: float) -> Tensor:
    """(c, H) in the compute dtype -> (c, v1 - v0): `(h W[v0:v1]^T + b[v0:v1]) / temperature`, in h's dtype."""
    v0, v1 = rows
    w = weight[v0:v1].to(h.dtype)  # a view when W is in the compute dtype
    z = torch.addmm(bias[v0:v1].to(h.dtype), h, w.t()) if bias is not None else h @ w.t()
    return z.div_(temperature) if temperature != 1.0 else z


def _chunk_logits(h: Tensor, weight: Tensor, bias: Tensor | None, slices: list[tuple[int, int]],
                  temperature: float) -> Tensor:
    """(c, H) in the compute dtype -> (c, V) logits, assembled slice by slice when W is low precision."""
    if len(slices) == 1:
        return _logits_block(h, weight, bias, slices[0], temperature)
    z = torch.empty(h.shape[0], weight.shape[0], dtype=h.dtype, device=h.device)
    for rows in slices:
        z[:, rows[0]:rows[1]] = _logits_block(h, weight, bias, rows, temperature)
    return z


class _ChunkedHead(torch.autograd.Function):
    """hidden (N, H), weight (V, H), bias (V,) | None, targets (N,) -> logprobs `shape`, entropy `shape` | (0,).

    Forward: per chunk of tokens, the (c, V) logits, their logsumexp (kept: N numbers), the target's
    log-prob and the entropy. Backward: tiled over (vocabulary slice, token chunk) blocks, each block's
    logits recomputed and turned into d/dlogits from the kept logsumexp and entropy alone; the weight
    gradient of a slice is summed over token chunks in the compute dtype, then cast once.

    The outputs are allocated with the caller's `shape` (N = its product) rather than viewed into it:
    an FSDP2 module's forward must not return views (its pre-backward hook would be lost).
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                temperature: float, chunk_size: int, with_entropy: bool, shape: torch.Size) -> tuple[Tensor, Tensor]:
        n, device, dtype = hidden.shape[0], hidden.device, _compute_dtype(hidden, weight)
        slices = _vocab_slices(weight, dtype)
        flat_lp = torch.empty(n, dtype=dtype, device=device)
        flat_ent = torch.empty(n if with_entropy else 0, dtype=dtype, device=device)
        lse_all = torch.empty(n, dtype=dtype, device=device)
        for start, end in _spans(n, chunk_size):
            z = _chunk_logits(hidden[start:end].to(dtype), weight, bias, slices, temperature)  # (c, V)
            lse = torch.logsumexp(z, dim=-1)  # (c,)
            flat_lp[start:end] = z.gather(-1, targets[start:end, None]).squeeze(-1) - lse
            lse_all[start:end] = lse
            if with_entropy:
                # -sum_j p_j log p_j, not lse - sum_j p_j z_j: no cancellation of two large numbers (5x more
                # accurate at logits of scale 10); a batched dot product, so no third (c, V) block
                log_p = z.sub_(lse[:, None])  # z's buffer
                p = log_p.exp()  # (c, V) softmax
                flat_ent[start:end] = -(p.unsqueeze(1) @ log_p.unsqueeze(2)).view(-1)
                del p, log_p
            del z
        ctx.save_for_backward(hidden, weight, bias, targets, lse_all, flat_ent)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.set_materialize_grads(False)  # an unused output (entropy, say) gets None: its terms are skipped
        # fresh tensors of the caller's shape (not views of what backward keeps): N numbers, a negligible copy
        logprobs = flat_lp.reshape(shape).clone()
        entropy = flat_ent.reshape(shape).clone() if with_entropy else flat_ent.new_empty(0)
        return logprobs, entropy

    @staticmethod
    def backward(ctx: Any, g_logprobs: Tensor | None, g_entropy: Tensor | None):  # type: ignore[override]
        hidden, weight, bias, targets, lse_all, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        nothing = (None,) * 8
        g_logprobs = g_logprobs.reshape(-1) if g_logprobs is not None else None  # (N,)
        g_entropy = g_entropy.reshape(-1) if g_entropy is not None and g_entropy.numel() else None
        if (g_logprobs is None and g_entropy is None) or not (need_h or need_w or need_b):
            return nothing
        tau, dtype = ctx.temperature, _compute_dtype(hidden, weight)
        slices, chunks = _vocab_slices(weight, dtype), _spans(hidden.shape[0], ctx.chunk_size)
        # accumulators in the compute dtype; when a tensor already is in it, its gradient is built in place
        g_h = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        g_w = torch.zeros_like(weight) if need_w and weight.dtype == dtype else (
            torch.empty_like(weight) if need_w else None)
        g_b = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_b and bias is not None else None
        for v0, v1 in slices:
            w = weight[v0:v1].to(dtype)  # (S, H): a view, or a float32 copy of one slice
            g_w_slice = None
            if g_w is not None:
                g_w_slice = g_w[v0:v1] if g_w.dtype == dtype else torch.zeros(w.shape, dtype=dtype, device=w.device)
            for start, end in chunks:
                h = hidden[start:end].to(dtype)
                lse = lse_all[start:end, None]  # (c, 1)
                log_p = _logits_block(h, weight, bias, (v0, v1), tau).sub_(lse)  # (c, S), recomputed
                p = log_p.exp()
                # g_z = g_ent * dH/dz + g_lp * dlp/dz, built in log_p's buffer: at most two blocks alive
                if g_entropy is not None:
                    g_z = log_p.add_(entropy[start:end, None]).mul_(-g_entropy[start:end, None])  # -(log p + H) g_ent
                else:
                    g_z = log_p.zero_()
                if g_logprobs is not None:
                    g_z.sub_(g_logprobs[start:end, None])
                g_z.mul_(p)  # p * (-(log p + H) g_ent - g_lp)
                del p
                if g_logprobs is not None:  # + [j == target] g_lp, for the targets inside this slice
                    local = targets[start:end] - v0
                    inside = (local >= 0) & (local < v1 - v0)
                    g_z.scatter_add_(-1, local.clamp(0, v1 - v0 - 1)[:, None],
                                     torch.where(inside, g_logprobs[start:end], 0.0)[:, None])
                if tau != 1.0:
                    g_z.div_(tau)  # d/d(h W^T + b)
                if g_h is not None:
                    g_h[start:end].addmm_(g_z, w)
                if g_w_slice is not None:
                    g_w_slice.addmm_(g_z.t(), h)
                if g_b is not None:
                    g_b[v0:v1] += g_z.sum(0)
                del g_z, log_p
            if g_w is not None and g_w_slice is not None and g_w.dtype != dtype:
                g_w[v0:v1] = g_w_slice
        g_hidden = g_h.to(hidden.dtype) if g_h is not None else None
        g_bias = g_b.to(bias.dtype) if g_b is not None else None
        return g_hidden, g_w, g_bias, None, None, None, None, None


def chunked_logprobs_entropy(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of `targets` and entropy under `softmax((hidden W^T + bias) / temperature)`, chunked.

    hidden (..., H) any float dtype, weight (V, H) (the LM head / tied embedding), targets (...) long,
    bias (V,) or None. Returns (logprobs (...), entropy (...) or None when `with_entropy` is False), both
    float32, differentiable w.r.t. hidden, weight and bias. Equal to `logprobs_from_logits` /
    `entropy_from_logits` of the full logits (in float32), with at most one chunk's (chunk_size, V)
    logits alive at a time in forward and in backward.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunked_logprobs_entropy: chunk_size={chunk_size}; must be a positive number of tokens")
    if temperature <= 0:
        raise ValueError(f"chunked_logprobs_entropy: temperature={temperature}; must be > 0")
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"chunked_logprobs_entropy: hidden {tuple(hidden.shape)} does not match targets "
                         f"{tuple(targets.shape)} (expected hidden = targets shape + (H,))")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"chunked_logprobs_entropy: weight {tuple(weight.shape)} is not (V, H) with "
                         f"H = {hidden.shape[-1]} (the hidden size)")
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    flat_targets = targets.reshape(-1).to(device=hidden.device, dtype=torch.long)  # (N,)
    logprobs, entropy = _ChunkedHead.apply(flat_hidden, weight, bias, flat_targets, float(temperature),
                                           int(chunk_size), bool(with_entropy), targets.shape)
    return logprobs, (entropy if with_entropy else None)


__all__ = ["chunked_logprobs_entropy", "DEFAULT_CHUNK_SIZE"]
