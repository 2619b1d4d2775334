"""Sharded checkpoints of a model and its optimizer with `torch.distributed.checkpoint` (DCP).

Layout of a checkpoint folder (one per role):

    <path>/dcp/            every rank writes its own shards of the model and AdamW state
    <path>/trainer.pt      rank 0: lr-scheduler state, step counters, `extra` (small, plain data)

DCP stores tensors by fully qualified name and global shape, so a checkpoint saved
with W ranks loads into any number of ranks. All ranks must see the same folder
(one node, or a shared filesystem across nodes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict, get_model_state_dict, set_model_state_dict

from rlkit.workers.optim import Optimizer
from rlkit.workers.sharded import ShardedModel

TRAINER_FILE = "trainer.pt"
DCP_DIR = "dcp"
FORMAT = "rlkit.worker-checkpoint/1"


def save_checkpoint(
    path: str | os.PathLike,
    model: ShardedModel,
    optimizer: Optimizer | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save model (+ optimizer + scheduler) shards under `path`. Collective: call on every rank."""
    path = Path(path)
    if model.rank == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    if optimizer is None:
        state = {"model": get_model_state_dict(model.module)}
    else:
        model_state, optim_state = get_state_dict(model.module, optimizer.adamw)
        state = {"model": model_state, "optim": optim_state}
    dcp.save(state, checkpoint_id=str(path / DCP_DIR))
    if model.rank == 0:
        trainer = {
            "format": FORMAT,
            "has_optimizer": optimizer is not None,
            "scheduler": optimizer.scheduler_state() if optimizer is not None else None,
            "world_size": model.world_size,
            "extra": extra or {},
        }
        tmp = path / (TRAINER_FILE + ".tmp")
        torch.save(trainer, tmp)
        os.replace(tmp, path / TRAINER_FILE)  # the marker file appears only once the shards are written
    dist.barrier()
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: ShardedModel,
    optimizer: Optimizer | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` into `model` (and `optimizer`); returns `extra`.

    Collective. Raises FileNotFoundError naming the folder if it is not a complete checkpoint.
    """
    path = Path(path)
    trainer_file = path / TRAINER_FILE
    if not trainer_file.is_file() or not (path / DCP_DIR).is_dir():
        raise FileNotFoundError(
            f"{path} is not a complete rlkit worker checkpoint (expected {DCP_DIR}/ and {TRAINER_FILE} inside)"
        )
    trainer = torch.load(trainer_file, map_location="cpu", weights_only=False)
    if trainer.get("format") != FORMAT:
        raise ValueError(f"{trainer_file}: unknown checkpoint format {trainer.get('format')!r}, expected {FORMAT!r}")
    if optimizer is not None and not trainer["has_optimizer"]:
        raise ValueError(f"{path} holds no optimizer state (saved by a frozen role); load it without an optimizer")
    if optimizer is None:
        model_state = get_model_state_dict(model.module)
        state = {"model": model_state}
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
        set_model_state_dict(model.module, state["model"])
    else:
        model_state, optim_state = get_state_dict(model.module, optimizer.adamw)
        state = {"model": model_state, "optim": optim_state}
        dcp.load(state, checkpoint_id=str(path / DCP_DIR))
        set_state_dict(
            model.module, optimizer.adamw, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )
        optimizer.load_scheduler_state(trainer["scheduler"])
    dist.barrier()
    return trainer["extra"]


__all__ = ["save_checkpoint", "load_checkpoint"]
