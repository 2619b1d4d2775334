"""AdamW with a warm-up / cosine learning-rate schedule and gradient clipping, for a sharded model.

The optimizer works on the FSDP2 shards directly (each rank steps only the
parameters it owns); `clip_grad_norm_` on DTensor gradients all-reduces the
norm, so every rank clips by the same global factor.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class OptimConfig:
    """Hyper-parameters of one trained model's optimizer (mirrors `rlkit.config.ActorConfig` / `CriticConfig`)."""

    lr: float = 1e-6
    """Peak learning rate (reached at the end of warm-up)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (applied to matrices only; biases and norms are not decayed)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 0
    """Optimizer steps of linear warm-up from 0 to `lr`."""
    lr_schedule: str = "constant"
    """After warm-up: "constant", "cosine" (to `min_lr_ratio * lr` at `total_steps`) or "linear" (likewise)."""
    total_steps: int | None = None
    """Optimizer steps the decay spans; required by "cosine" and "linear"."""
    min_lr_ratio: float = 0.0
    """Floor of the decaying schedules, as a fraction of `lr`."""
    grad_clip: float | None = 1.0
    """Clip the global gradient L2 norm to this value; None (or <= 0) disables clipping."""

    @classmethod
    def from_section(cls, section: Any, **overrides: Any) -> "OptimConfig":
        """Take the fields of this class that a config section (dataclass or dict) has, then `overrides`."""
        names = {f.name for f in fields(cls)}
        src = section if isinstance(section, dict) else vars(section) if section is not None else {}
        values = {k: v for k, v in src.items() if k in names}
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"OptimConfig.lr_schedule={self.lr_schedule!r}: allowed {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule != "constant" and not self.total_steps:
            raise ValueError(
                f"OptimConfig.total_steps must be set for lr_schedule={self.lr_schedule!r} "
                "(the number of optimizer steps the decay spans)"
            )
        if self.lr < 0 or self.warmup_steps < 0:
            raise ValueError(f"OptimConfig: lr ({self.lr}) and warmup_steps ({self.warmup_steps}) must be >= 0")
        self.betas = tuple(self.betas)  # YAML gives a list


def lr_multiplier(
    step: int,
    *,
    warmup_steps: int,
    schedule: str,
    total_steps: int | None,
    min_lr_ratio: float = 0.0,
) -> float:
    """Factor on the peak lr for optimizer step `step` (0-based: the lr used by the step-th update).

    Linear warm-up `(step + 1) / warmup_steps` (so the first update is not wasted at lr 0),
    then constant, or a cosine / linear decay from 1 to `min_lr_ratio` over
    `[warmup_steps, total_steps]`, flat after `total_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, (total_steps or 0) - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "linear":
        decay = 1.0 - progress
    else:
        raise ValueError(f"lr_multiplier: unknown schedule {schedule!r}; allowed {', '.join(LR_SCHEDULES)}")
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: matrices decayed, vectors (biases, norm scales) not. Frozen parameters are skipped."""
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class Optimizer:
    """AdamW + LambdaLR schedule + gradient clipping over one (sharded) module."""

    def __init__(self, model: nn.Module, cfg: OptimConfig):
        self.cfg = cfg
        self.model = model
        # foreach=False: DTensor shards of uneven sizes; the per-tensor path is the tested one on gloo.
        self.adamw = torch.optim.AdamW(
            param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=False
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.adamw,
            lambda step: lr_multiplier(
                step,
                warmup_steps=cfg.warmup_steps,
                schedule=cfg.lr_schedule,
                total_steps=cfg.total_steps,
                min_lr_ratio=cfg.min_lr_ratio,
            ),
        )

    @property
    def steps(self) -> int:
        """Optimizer steps taken so far."""
        return int(self.scheduler.last_epoch)

    @property
    def lr(self) -> float:
        """Learning rate the next step will use."""
        return float(self.adamw.param_groups[0]["lr"])

    def zero_grad(self) -> None:
        self.adamw.zero_grad(set_to_none=True)

    def step(self) -> dict[str, float]:
        """Clip, step, advance the schedule. Returns `grad_norm` (before clipping) and the `lr` used.

        A non-finite gradient norm skips the update (the gradients are dropped) instead
        of writing nan into the weights; `skipped` reports it.
        """
        params = [p for group in self.adamw.param_groups for p in group["params"]]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip and self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # DTensor: the all-reduced global norm
            norm = norm.full_tensor()
        norm = float(norm)
        lr = self.lr
        skipped = not math.isfinite(norm)
        if not skipped:
            self.adamw.step()
        with warnings.catch_warnings():
            # A skipped step still advances the schedule (it counts optimizer steps); torch would warn that the
            # scheduler stepped before the optimizer, which is intended here and says nothing about the skip.
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.scheduler.step()
        self.zero_grad()
        return {"grad_norm": norm, "lr": lr, "skipped": float(skipped)}

    # state moves between devices for offloading between stages
    def to(self, device: torch.device) -> None:
        """Move the optimizer state (AdamW moments) to `device`, e.g. CPU while another stage runs."""
        for state in self.adamw.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    state[key] = value.to(device, non_blocking=True)

    def scheduler_state(self) -> dict:
        return self.scheduler.state_dict()

    def load_scheduler_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
        # LambdaLR.load_state_dict does not re-apply the lr to the param groups.
        for group, lr in zip(self.adamw.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr


__all__ = ["OptimConfig", "Optimizer", "lr_multiplier", "param_groups", "LR_SCHEDULES"]
