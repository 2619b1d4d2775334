"""Small parts every role is composed of: tokenizer loading, offload between calls, per-call stats.

`rlkit.workers.role.ModelRole` puts them together with a `ShardedModel` (and an
`Optimizer` when the role trains); each role class holds one: composition, no base class.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from rlkit.monitor.stats import device_peak_flops, measure, transformer_flops
from rlkit.workers.optim import Optimizer
from rlkit.workers.sharded import ShardedModel


def load_tokenizer(model_source: Any, tokenizer_path: str | os.PathLike | None) -> Any:
    """The tokenizer to check and export with the model: `tokenizer_path` if given, else the
    model folder's own tokenizer when it has one; None otherwise (hub names are not fetched here)."""
    from transformers import AutoTokenizer

    if tokenizer_path is not None:
        path = os.path.expanduser(os.fspath(tokenizer_path))
        if not os.path.exists(path) and (path.startswith(("/", ".", "~")) or path.count("/") > 1):
            raise FileNotFoundError(f"tokenizer path {os.fspath(tokenizer_path)!r} does not exist")
        return AutoTokenizer.from_pretrained(path)
    if isinstance(model_source, (str, os.PathLike)):
        folder = os.path.expanduser(os.fspath(model_source))
        if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(folder)
    return None


class Residency:
    """Where a role's parameters (and optimizer state) live between calls.

    With `offload=True` they sit in CPU memory between calls and come to the device
    for the duration of one call, so colocated roles share the device memory. On a
    CPU-only host it changes nothing.
    """

    def __init__(self, model: ShardedModel, optimizer: Optimizer | None, offload: bool):
        self.model, self.optimizer, self.offload = model, optimizer, offload
        if offload:
            self.to_cpu()

    def to_cpu(self) -> None:
        self.model.offload()
        if self.optimizer is not None and self.model.device.type != "cpu":
            self.optimizer.to(torch.device("cpu"))

    def to_device(self) -> None:
        self.model.onload()
        if self.optimizer is not None:
            self.optimizer.to(self.model.device)

    @contextmanager
    def on_device(self) -> Iterator[None]:
        """Parameters on the device for the block; back to CPU afterwards when offloading."""
        if self.offload:
            self.to_device()
        try:
            yield
        finally:
            if self.offload:
                self.to_cpu()


class CallStats:
    """Per-call measurements of one role: seconds, tokens, host/CUDA memory, model FLOPs, MFU."""

    def __init__(self, model: ShardedModel, prefix: str):
        self.model, self.prefix = model, prefix
        self.log: list[dict[str, float]] = []

    @contextmanager
    def measure(self, call: str, *, backward: bool) -> Iterator[dict]:
        """Measure one call. The block sets `info["tokens"]` (valid prompt+response tokens
        processed, epochs counted) and `info["seq_len"]` (mean padded sequence length).
        The flat stats dict lands in `info["stats"]` and in `log`."""
        info: dict[str, Any] = {"tokens": 0, "seq_len": 0.0}
        with measure(self.model.device) as m:
            yield info
        flops = transformer_flops(
            self.model.num_matmul_params,
            self.model.num_layers,
            self.model.hidden_size,
            int(info["tokens"]),
            int(info["seq_len"]),
            backward=backward,
        )
        peak = device_peak_flops(self.model.device, self.model.compute_dtype)
        stats = m.stats(f"{self.prefix}/{call}", tokens=int(info["tokens"]), flops=flops, peak_flops=peak)
        info["stats"] = stats
        self.log.append(stats)

    def pop(self) -> list[dict[str, float]]:
        """The measurements since the last `pop`."""
        out, self.log = self.log, []
        return out


__all__ = ["Residency", "CallStats", "load_tokenizer"]
