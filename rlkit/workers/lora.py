"""LoRA adapters on the policy through PEFT: the adapted model, the reference as the same model with the
adapters off, and merged weights for the rollout engines and exports.

With `actor.lora_rank = r > 0` every targeted linear layer `W` (d_out, d_in) gets `A` (r, d_in) and `B`
(d_out, r), `B` starting at 0, and computes `x W^T + s x A^T B^T` with `s = lora_alpha / r`; only `A` and
`B` train (a small optimizer state), the base weights stay frozen. So the reference policy is the same
model with the adapters disabled: no second copy of the weights. Engines that take plain weights (vLLM,
an export) get `W + s B A` under the base model's own parameter names (`merge_lora_weights`).

PEFT's names: the base model's parameters sit under `base_model.model.`, a targeted layer `q_proj` holds
`q_proj.base_layer.weight` (W), `q_proj.lora_A.<adapter>.weight` and `q_proj.lora_B.<adapter>.weight`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"


@dataclass(frozen=True)
class LoraSpec:
    """What `actor.lora_*` asks for."""

    rank: int
    """r: the adapters' inner dimension."""
    alpha: float
    """The adapters' output is scaled by alpha / r."""
    target_modules: tuple[str, ...] | str = "all-linear"
    """Module names to adapt ("q_proj", "v_proj", ...), or "all-linear" (every linear layer but the LM head)."""

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, actor: Any) -> "LoraSpec | None":
        """From an `ActorConfig` (None when `lora_rank` is 0: full fine-tuning)."""
        if not actor.lora_rank:
            return None
        targets = actor.lora_target_modules
        if isinstance(targets, str):
            targets = targets if targets == "all-linear" else tuple(t.strip() for t in targets.split(",") if t.strip())
        return cls(rank=int(actor.lora_rank), alpha=float(actor.lora_alpha), target_modules=tuple(targets)
                   if not isinstance(targets, str) else targets)


def import_peft():
    try:
        import peft
    except ImportError as err:  # pragma: no cover - peft is a dependency
        raise ImportError("actor.lora_rank > 0 needs the `peft` package: pip install peft") from err
    return peft


def apply_lora(hf_model: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """`hf_model` wrapped as a PEFT model with fresh adapters (B = 0: the adapted model starts equal to the
    base model); only the adapters require grad. The transformers model object is modified in place."""
    peft = import_peft()
    config = peft.LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=0.0, bias="none",
                             target_modules=list(spec.target_modules) if not isinstance(spec.target_modules, str)
                             else spec.target_modules)
    return peft.get_peft_model(hf_model, config)


def is_lora_model(module: torch.nn.Module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "disable_adapter")


def merge_lora_weights(named: Iterable[tuple[str, torch.Tensor]], scaling: float) -> Iterator[tuple[str, torch.Tensor]]:
    """`(name, tensor)` pairs of a PEFT model's (full, unsharded) parameters -> the base model's parameters,
    each targeted weight merged as `W + scaling * B @ A`, under the base model's names. Works on a stream
    (weights arrive one by one, in any order): a targeted layer's weight is yielded once its W, A and B
    have all arrived; everything else at once. Never changes the tensors it is given."""
    pending: dict[str, dict[str, torch.Tensor]] = {}  # layer prefix -> {"W" / "A" / "B": tensor}
    for name, tensor in named:
        name = name.removeprefix(PEFT_PREFIX)
        part, layer = _lora_part(name)
        if part is None:
            yield name, tensor
            continue
        if part == "bias":  # the base layer's bias is not adapted
            yield f"{layer}.bias", tensor
            continue
        pieces = pending.setdefault(layer, {})
        pieces[part] = tensor
        if len(pieces) == 3:
            del pending[layer]
            w, a, b = pieces["W"], pieces["A"], pieces["B"]
            merged = w.float() + scaling * (b.float() @ a.float())  # (d_out, r) @ (r, d_in)
            yield f"{layer}.weight", merged.to(w.dtype)
    if pending:
        raise ValueError(f"merge_lora_weights: LoRA layers with missing pieces: "
                         f"{ {k: sorted(v) for k, v in list(pending.items())[:3]} }")


def _lora_part(name: str) -> tuple[str | None, str]:
    """("W" | "A" | "B" | "bias", the layer's name) for a targeted layer's tensor, (None, name) otherwise."""
    for marker, part in ((".base_layer.weight", "W"), (".base_layer.bias", "bias"),
                         (f".lora_A.{ADAPTER}.weight", "A"), (f".lora_B.{ADAPTER}.weight", "B")):
        if name.endswith(marker):
            return part, name[: -len(marker)]
    return None, name


__all__ = ["LoraSpec", "apply_lora", "is_lora_model", "merge_lora_weights", "PEFT_PREFIX"]
