"""The hf engine's sampling loop: prefill, then one token per row per forward with a KV cache.

`sample_responses` is our own loop over a transformers causal LM's forward (not `generate()`): one
place decides positions (`cumsum(mask) - 1`, as the trainer numbers them), EOS / stop tokens / stop
strings, `min_new_tokens` and the log-prob convention of `rlkit.rollout.sampling`. Two KV caches:

- "dynamic" (the default): transformers' `DynamicCache`. Rows that end are dropped from the cache, so
  later steps cost only the rows still going; each step appends to every layer's keys and values
  (`torch.cat`: a new buffer per layer per token).
- "static": transformers' `StaticCache`, allocated once for prompt + `max_new_tokens` and written in
  place. No copy per token, and every decode step has the same shapes (so `compile_decode` can
  `torch.compile` it), but finished rows cannot be dropped: they are computed until the last row
  ends, and attention always spans the whole allocated length.

Both draw the same tokens from the same generator: each step samples only the rows still going, in
the same order, so the random stream is consumed identically.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from rlkit.rollout.sampling import SamplingParams, next_tokens

KV_CACHES = ("dynamic", "static")
"""The values of `sample_responses(kv_cache=...)` (and of `rollout.kv_cache`)."""
COMPILED_LENGTH_MULTIPLE = 32
"""A compiled static cache's length (prompt + max_new_tokens) is rounded up to a multiple of this, so that
batches whose prompts differ a little in width reuse one compiled graph instead of compiling again."""


@dataclass
class Responses:
    """What one sampling loop produced for b prompts (one row each), right-padded to T."""

    ids: torch.Tensor
    """(b, T) long: sampled tokens; `pad_id` after each row's end."""
    mask: torch.Tensor
    """(b, T) long: 1 up to and including the token that ended the row (EOS / stop), 0 after."""
    logprobs: torch.Tensor
    """(b, T) float32: log_softmax(logits / T_logprob)[token], 0 on padding."""
    forward_calls: int
    """Model forward passes run (1 prefill + decode steps)."""


class StopStrings:
    """Detects stop strings at the end of each row's generated text.

    Checked after every token, so a stop string first appears in a window that ends
    with the newest token: only the last `window` tokens are decoded. A character is
    at most 4 UTF-8 bytes and every byte-level token carries at least one byte, so
    `4 * longest + 8` tokens always cover the string (the 8 absorbs tokens that decode
    to nothing, such as special tokens).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        if stops and tokenizer is None:
            raise ValueError("SamplingParams.stop needs a tokenizer to decode text; the engine has none "
                             "(pass tokenizer_path to the actor or use stop_token_ids)")
        self.tokenizer, self.stops = tokenizer, list(stops)
        self.window = 4 * max((len(s) for s in self.stops), default=0) + 8

    def __bool__(self) -> bool:
        return bool(self.stops)

    def hits(self, generated: torch.Tensor) -> torch.Tensor:
        """(b, t) tokens generated so far -> (b,) bool: the text ends a stop string."""
        texts = self.tokenizer.batch_decode(generated[:, -self.window:].tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in text for s in self.stops) for text in texts], dtype=torch.bool)


def trim_left_padding(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the leading columns that are padding in every row (keeps at least one). (b, P) -> (b, P')."""
    used = prompt_mask.bool().any(0).nonzero()
    first = min(int(used[0]) if len(used) else prompt_ids.shape[1] - 1, prompt_ids.shape[1] - 1)
    return prompt_ids[:, first:], prompt_mask[:, first:]


def check_left_padded(prompt_mask: torch.Tensor, where: str) -> None:
    """Raise naming the first row whose mask is not 0...0 1...1 (generation continues from column P-1)."""
    mask = prompt_mask.long()
    bad = ((mask[:, 1:] - mask[:, :-1]) < 0).any(-1) | (mask[:, -1] == 0)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"{where}: prompt row {row} is not left-padded (prompt_mask {mask[row].tolist()}); prompts must end "
            "at the last column (use rlkit.data.encode_prompts, which left-pads)"
        )


def cache_argument(model: Any) -> str:
    """The name of the KV-cache argument (and output field) of `model.forward`: "cache" from transformers
    5.20 on, "past_key_values" before (5.x warns on the old name and drops it in 5.40)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT (LoRA) model's own
    params = inspect.signature(type(base).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


_COMPILED: "weakref.WeakKeyDictionary[nn.Module, Callable]" = weakref.WeakKeyDictionary()


def compiled_forward(model: nn.Module) -> Callable:
    """`torch.compile(model.forward)`, made once per model and kept while the model lives (dynamo then
    reuses its graph for every call with the same shapes: one per batch size and length budget)."""
    fn = _COMPILED.get(model)
    if fn is None:
        fn = _COMPILED[model] = torch.compile(model.forward, dynamic=False)
    return fn


def _static_cache(model: nn.Module, max_len: int) -> Any:
    from transformers import StaticCache

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return StaticCache(config=base.config, max_cache_len=max_len)


@torch.no_grad()
def sample_responses(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    stop_strings: StopStrings | None = None,
    kv_cache: str = "dynamic",
    compile_decode: bool = False,
) -> Responses:
    """Sample one response per row of left-padded prompts with a KV cache.

    `model` is any transformers causal LM (an FSDP-wrapped one too) called as
    `model(input_ids, attention_mask, position_ids, cache, use_cache, logits_to_keep)` (the KV-cache
    argument is `cache` from transformers 5.20, `past_key_values` before: `cache_argument` picks).
    Positions count real tokens only (`cumsum(mask) - 1`), exactly as the trainer's
    forward (`rlkit.workers.batching.sequence_inputs`) numbers them, so the log-probs
    match its recomputation. `kv_cache`: "dynamic" (rows that end are dropped from the cache) or
    "static" (see the module docstring); `compile_decode` runs the decode steps through
    `torch.compile` (static cache only: the dynamic one changes shape every step).
    """
    if kv_cache not in KV_CACHES:
        raise ValueError(f"sample_responses: kv_cache={kv_cache!r}: must be one of {KV_CACHES}")
    if compile_decode and kv_cache != "static":
        raise ValueError("sample_responses: compile_decode needs kv_cache='static' (a dynamic cache changes "
                         "shape at every token, so every step would recompile)")
    static = kv_cache == "static"
    device = prompt_ids.device
    prompt_ids, mask = trim_left_padding(prompt_ids, prompt_mask.long())
    (b, width), budget = prompt_ids.shape, params.max_new_tokens
    stop_ids = torch.tensor(sorted(set(eos_ids) | set(params.stop_token_ids)), dtype=torch.long, device=device)

    out_ids = torch.full((b, budget), pad_id, dtype=torch.long, device=device)  # (b, T_max)
    out_logprobs = torch.zeros((b, budget), dtype=torch.float32, device=device)
    lengths = torch.full((b,), budget, dtype=torch.long, device=device)  # tokens incl. the ending one
    active = torch.arange(b, device=device)  # original row of each row still going
    # The attention mask of prompt + every new token, allocated once (b, length): column P + t is token t.
    # Dynamic: step t passes the first P + t + 1 columns. Static: the cache spans all `length` slots
    # (P + T_max, rounded up when compiled) and every step passes the whole mask; the slots not written yet
    # lie after the query, so the causal mask hides them (the tests compare against a loop without a cache).
    length = width + budget
    if compile_decode:
        length = -(-length // COMPILED_LENGTH_MULTIPLE) * COMPILED_LENGTH_MULTIPLE  # the extra slots stay unused
    full_mask = torch.cat([mask, mask.new_ones((b, length - width))], dim=1)  # (b, length)

    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (b, P)
    cache_arg = cache_argument(model)
    extra = {cache_arg: _static_cache(model, length)} if static else {}
    out = model(input_ids=prompt_ids, attention_mask=full_mask if static else mask, position_ids=positions,
                use_cache=True, logits_to_keep=1, **extra)
    cache, logits = getattr(out, cache_arg), out.logits[:, -1]  # logits (b_cache, V)
    next_position = mask.sum(-1)  # (b_cache,) position of the token being generated
    decode = compiled_forward(model) if compile_decode else model
    # static: (b, 1) tokens fed; a finished row keeps feeding its last one (computed, never read)
    feed = torch.full((b, 1), pad_id, dtype=torch.long, device=device) if static else None
    calls = 1
    for t in range(budget):
        early = t < params.min_new_tokens  # no row may end yet
        if static and len(active) < b:
            logits = logits[active]  # the cache keeps every row; sample only the rows still going
        tokens, logprobs = next_tokens(logits, params, generator, banned=stop_ids if early else None)  # (b_active,)
        out_ids[active, t] = tokens
        out_logprobs[active, t] = logprobs
        ended = torch.isin(tokens, stop_ids)
        if stop_strings and t + 1 >= params.min_new_tokens:
            ended |= stop_strings.hits(out_ids[active, : t + 1]).to(device)
        lengths[active[ended]] = t + 1
        if t == budget - 1:
            break
        n_ended = int(ended.sum())  # the step's one host sync
        if n_ended == len(active):
            break
        if n_ended:  # drop finished rows: later steps sample (dynamic: also compute) only the rows still going
            keep = (~ended).nonzero().squeeze(-1)
            active, tokens = active[keep], tokens[keep]
            if not static:
                cache.batch_select_indices(keep)
                full_mask, next_position = full_mask[keep], next_position[keep]
        if static:
            feed[active, 0] = tokens
            step_ids, step_mask = feed, full_mask
        else:
            step_ids, step_mask = tokens[:, None], full_mask[:, : width + t + 1]
        out = decode(input_ids=step_ids, attention_mask=step_mask, position_ids=next_position[:, None],
                     use_cache=True, **{cache_arg: cache})
        logits = out.logits[:, -1]
        next_position = next_position + 1
        calls += 1

    width = max(1, int(lengths.max()))
    valid = torch.arange(width, device=device)[None, :] < lengths[:, None]  # (b, T)
    ids = torch.where(valid, out_ids[:, :width], torch.full_like(out_ids[:, :width], pad_id))
    logprobs = torch.where(valid, out_logprobs[:, :width], torch.zeros_like(out_logprobs[:, :width]))
    return Responses(ids=ids, mask=valid.long(), logprobs=logprobs, forward_calls=calls)


__all__ = [
    "COMPILED_LENGTH_MULTIPLE",
    "KV_CACHES",
    "Responses",
    "StopStrings",
    "cache_argument",
    "check_left_padded",
    "compiled_forward",
    "sample_responses",
    "trim_left_padding",
]
