"""Sampling settings and the pure tensor pieces of a rollout: pick a token, score it, mask after EOS.

Every rollout engine (`hf`, later `vllm`) takes a `SamplingParams` and must return
log-probs under the SAME convention the trainer recomputes them with
(`rlkit.workers.policy.response_logprobs`):

    rollout_logprobs[t] = log_softmax(logits_t / T)[token_t]        (T = temperature)

computed on the FULL vocabulary: top-k / top-p only decide which tokens may be drawn,
they do not renormalise the reported log-probs (the trainer's forward knows nothing of
them). Greedy decoding (temperature 0) reports log-probs at temperature 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from rlkit.algos.core import logprobs_from_logits

# Big odd stride between per-rank seeds: seed s on rank r never meets seed s' on rank r'
# for any realistic rank count, so consecutive step seeds do not replay another rank's stream.
_RANK_STRIDE = 1_000_003


@dataclass
class SamplingParams:
    """How to sample responses for a batch of prompts (one engine call)."""

    n: int = 1
    """Samples per prompt; the prompt's rows share its `group_id`."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy (argmax, log-probs reported at temperature 1)."""
    top_p: float = 1.0
    """Nucleus sampling: draw only from the smallest set of tokens with this much mass; 1 = off."""
    top_k: int = 0
    """Draw only among the k most likely tokens; 0 = off."""
    max_new_tokens: int = 256
    """Most tokens generated per response; a response that hits it has no EOS (mask is all ones)."""
    min_new_tokens: int = 0
    """No response ends before this many tokens: EOS and `stop_token_ids` cannot be drawn (and stop strings
    do not end a row) until then. `min_new_tokens = max_new_tokens` makes every response exactly that long
    (equal work in benchmarks). The hf engine only restricts the draw, like top-k: its log-probs stay on the
    full distribution, as the trainer computes them. vLLM's reported log-probs come after its min_tokens
    step, so before `min_new_tokens` they differ from the trainer's (by 0.01-0.07 nat on a tiny test model);
    training uses the trainer's log-probs, so only the rollout-vs-trainer diagnostics see it."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: a response ends with the token that completes one (kept in the response and its text)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end a response like EOS does (besides the tokenizer's / model's EOS)."""
    seed: int | None = None
    """Seed of this call's sampler; rank r draws from seed `seed * 1_000_003 + r`. None: the engine's own
    seed combined with its call counter (new samples every call, reproducible from a fresh start)."""

    def __post_init__(self):
        self.validate()

    @property
    def greedy(self) -> bool:
        """True when decoding takes the argmax (temperature 0)."""
        return self.temperature == 0

    @property
    def logprob_temperature(self) -> float:
        """The temperature the reported log-probs are taken at (1 for greedy)."""
        return logprob_temperature(self.temperature)

    def validate(self) -> "SamplingParams":
        """Raise ValueError naming the bad field; return self."""
        checks = (
            ("n", self.n, isinstance(self.n, int) and self.n >= 1, "an int >= 1"),
            ("temperature", self.temperature, self.temperature >= 0, ">= 0 (0 = greedy)"),
            ("top_p", self.top_p, 0 < self.top_p <= 1, "in (0, 1]"),
            ("top_k", self.top_k, isinstance(self.top_k, int) and self.top_k >= 0, "an int >= 0 (0 = off)"),
            ("max_new_tokens", self.max_new_tokens, isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "an int >= 1"),
            ("min_new_tokens", self.min_new_tokens, isinstance(self.min_new_tokens, int)
             and 0 <= self.min_new_tokens <= self.max_new_tokens, f"an int in 0..max_new_tokens ({self.max_new_tokens})"),
        )
        for name, value, ok, want in checks:
            if not ok:
                raise ValueError(f"SamplingParams.{name}={value!r}: must be {want}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"SamplingParams.stop={self.stop!r}: must be a list of non-empty strings")
        if not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"SamplingParams.stop_token_ids={self.stop_token_ids!r}: must be a list of ids >= 0")
        return self

    def replace(self, **changes: Any) -> "SamplingParams":
        """A copy with `changes` applied (e.g. `params.replace(temperature=0, n=1)` for a greedy baseline)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, rollout: Any, **overrides: Any) -> "SamplingParams":
        """From an `rlkit.config.RolloutConfig` (or anything with its field names); `overrides` win.

        The config's `seed` is the engine's base seed, not a per-call seed, so it is not copied.
        """
        names = ("n", "temperature", "top_p", "top_k", "max_new_tokens", "min_new_tokens", "stop")
        values = {name: getattr(rollout, name) for name in names if hasattr(rollout, name)}
        values["stop"] = list(values.get("stop") or [])
        values.update(overrides)
        return cls(**values)

    @classmethod
    def coerce(cls, value: "SamplingParams | dict | None", default: "SamplingParams") -> "SamplingParams":
        """Accept a SamplingParams, a dict of its fields (applied over `default`), or None (`default`)."""
        if value is None:
            return default
        if isinstance(value, SamplingParams):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"sampling settings: unknown field(s) {sorted(unknown)}; "
                                 f"allowed {[f.name for f in dataclasses.fields(cls)]}")
            return default.replace(**value)
        raise TypeError(f"sampling must be SamplingParams, a dict or None, got {type(value).__name__}")


def logprob_temperature(temperature: float) -> float:
    """The temperature log-probs are taken at for a sampling `temperature`: itself, or 1 for greedy (0).

    The one rule for the rollout engines and every trainer role (policy, reference): greedy
    decoding has no temperature to divide logits by, so log-probs are those of the plain
    softmax, and no role ever divides by 0. A negative temperature is an error.
    """
    if temperature < 0:
        raise ValueError(f"temperature={temperature!r}: must be >= 0 (0 = greedy)")
    return 1.0 if temperature == 0 else float(temperature)


def rank_seed(seed: int, rank: int) -> int:
    """The sampler seed of `rank` for a call seeded with `seed` (distinct per rank, deterministic)."""
    return (int(seed) * _RANK_STRIDE + int(rank)) % (2**63 - 1)


# ----------------------------------------------------------------------------- token choice


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set the logits of tokens that may not be drawn to -inf. (b, V) -> (b, V).

    top_k keeps the k largest (ties at the k-th value are kept too); top_p keeps the
    smallest prefix of tokens, by decreasing probability, whose mass reaches `top_p`
    (the most likely token is always kept). Apply to logits already divided by the
    temperature: the nucleus is a set of the distribution actually sampled from.
    """
    out = logits
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]  # (b, 1)
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)  # (b, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop_sorted = mass_before >= top_p  # the first token has 0 before it: always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def _last_positive(weights: torch.Tensor) -> torch.Tensor:
    """(b, n) non-negative -> (b, 1) long: the index of each row's last positive entry (0 if none)."""
    idx = torch.arange(weights.shape[-1], device=weights.device)
    return torch.where(weights > 0, idx, 0).amax(-1, keepdim=True)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(b, n) non-negative weights, (b, 1) uniforms in [0, 1) -> (b, 1) long: the first index whose cumulative
    weight exceeds u * total, i.e. index i with probability weights[i] / total. Zero weights are never chosen;
    u * total rounding up to the total falls back to the last positive entry."""
    cdf = weights.cumsum(-1)  # (b, n)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return torch.minimum(picked, _last_positive(weights))


def draw_tokens(probs: torch.Tensor, generator: torch.Generator | None = None, block: int = 256) -> torch.Tensor:
    """(b, V) probabilities (zeros allowed; rows need not sum to exactly 1) -> (b,) long: one draw per row.

    Inverse-CDF sampling in two levels: a block of `block` tokens is drawn by the blocks' masses, then a token
    inside it by its probability (two uniforms per row). It is exact sampling like `torch.multinomial`, whose
    CPU path draws an exponential variate for EVERY vocabulary entry (measured: 57 ms for (64, 49152) on one
    core, against about 3 ms here). The two levels keep float32 rounding relative to each block's own mass,
    so a rare token's probability is not blurred by the rounding of a cumulative sum near 1.
    """
    b, vocab = probs.shape
    pad = (-vocab) % block
    padded = torch.nn.functional.pad(probs, (0, pad)) if pad else probs  # (b, V'): padding has zero mass
    blocks = padded.view(b, -1, block)  # (b, n_blocks, block)
    u = torch.rand((b, 2), generator=generator, device=probs.device, dtype=probs.dtype)
    which = _inverse_cdf(blocks.sum(-1), u[:, :1])  # (b, 1) block index
    inner = blocks.gather(1, which[:, :, None].expand(b, 1, block)).squeeze(1)  # (b, block)
    token = which * block + _inverse_cdf(inner, u[:, 1:])  # (b, 1)
    return token.squeeze(-1)


def next_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    banned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose one token per row and its log-prob under the trainer's convention.

    logits (b, V) float -> (tokens (b,) long, logprobs (b,) float32). `banned`: ids that may not be
    drawn at this step (stop tokens before `min_new_tokens`); the log-probs ignore the ban.
    """
    logits = logits.float()
    scaled = logits / params.logprob_temperature if params.logprob_temperature != 1.0 else logits
    allowed = scaled if banned is None else scaled.index_fill(-1, banned, float("-inf"))
    if params.greedy:
        tokens = allowed.argmax(-1)
    else:
        probs = torch.softmax(filter_logits(allowed, params.top_k, params.top_p), dim=-1)  # (b, V)
        tokens = draw_tokens(probs, generator)
    return tokens, logprobs_from_logits(scaled, tokens)


# ----------------------------------------------------------------------------- masks and layout


def mask_through_first_stop(response_ids: torch.Tensor, stop_ids: Sequence[int]) -> torch.Tensor:
    """(B, T) ids -> (B, T) long mask: 1 up to and including the first token in `stop_ids`, 0 after.

    A row without a stop token is all ones (it hit the length limit).
    """
    if len(stop_ids) == 0:
        return torch.ones_like(response_ids, dtype=torch.long)
    is_stop = torch.isin(response_ids, torch.tensor(list(stop_ids), device=response_ids.device))
    stops_before = is_stop.long().cumsum(-1) - is_stop.long()  # stop tokens strictly before column t
    return (stops_before == 0).long()


def expand_indices(num_prompts: int, n: int) -> torch.Tensor:
    """Row order that repeats each prompt n times, prompt-major: [0]*n + [1]*n + ... -> (num_prompts * n,)."""
    return torch.arange(num_prompts).repeat_interleave(n)


def group_ids_for(num_prompts: int, n: int, first: int = 0) -> torch.Tensor:
    """(num_prompts * n,) long: prompt i's n rows all get `first + i`."""
    return expand_indices(num_prompts, n) + first


__all__ = [
    "draw_tokens",
    "SamplingParams",
    "logprob_temperature",
    "rank_seed",
    "filter_logits",
    "next_tokens",
    "mask_through_first_stop",
    "expand_indices",
    "group_ids_for",
]
