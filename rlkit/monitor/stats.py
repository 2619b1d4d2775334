"""Measurement helpers: wall time, host and device memory, model FLOPs and MFU.

Pure measurement, no plotting and no logging: every worker call wraps its work in
`measure(device)` and returns the numbers as a flat dict of floats, which the
driver's monitor aggregates and draws.

FLOPs follow the usual dense-transformer count (Kaplan et al. 2020, arXiv
2001.08361, section 2.1; the attention term as in PaLM, Chowdhery et al. 2022,
arXiv 2204.02311, appendix B): a forward pass costs `2 * N` FLOPs per token for
the N non-embedding weights it multiplies by, plus `2 * n_layers * seq_len *
hidden` for the attention scores and their weighted sum (causal masking is not
subtracted, as in PaLM). A backward pass costs twice the forward.
"""

from __future__ import annotations

import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import psutil
import torch

_GIB = float(1 << 30)

# Dense (no sparsity) peak tensor throughput in FLOP/s per device, by dtype.
# From the vendors' data sheets; matched by substring of torch.cuda.get_device_name().
# Order matters: more specific names first ("H100 PCIe" before "H100").
_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.5e12, "fp16": 989.5e12, "fp32": 494.7e12}),
    ("H100 PCIe", {"bf16": 756.0e12, "fp16": 756.0e12, "fp32": 378.0e12}),
    ("H100", {"bf16": 989.5e12, "fp16": 989.5e12, "fp32": 494.7e12}),
    ("H800", {"bf16": 989.5e12, "fp16": 989.5e12, "fp32": 494.7e12}),
    ("A100", {"bf16": 312.0e12, "fp16": 312.0e12, "fp32": 156.0e12}),  # fp32 = TF32
    ("A800", {"bf16": 312.0e12, "fp16": 312.0e12, "fp32": 156.0e12}),
    ("L40S", {"bf16": 362.05e12, "fp16": 362.05e12, "fp32": 183.0e12}),
    ("L4", {"bf16": 121.0e12, "fp16": 121.0e12, "fp32": 60.0e12}),
    ("A10", {"bf16": 125.0e12, "fp16": 125.0e12, "fp32": 62.5e12}),
    ("4090", {"bf16": 165.2e12, "fp16": 165.2e12, "fp32": 82.6e12}),
)


# ----------------------------------------------------------------------------- memory


def host_rss_bytes() -> int:
    """Resident set size of this process now, in bytes."""
    return psutil.Process().memory_info().rss


def host_peak_rss_bytes() -> int:
    """Largest resident set size this process has had since it started, in bytes.

    The OS keeps only the lifetime peak (it cannot be reset), so a call's own peak
    is reported as `max(rss before, rss after)` next to this lifetime value.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


def cuda_reset_peak(device: torch.device) -> None:
    """Start a new CUDA peak-memory window on `device` (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_bytes(device: torch.device) -> int:
    """Largest CUDA memory allocated by torch on `device` since the last reset; 0 off CUDA."""
    if device.type != "cuda":
        return 0
    return int(torch.cuda.max_memory_allocated(device))


# ----------------------------------------------------------------------------- FLOPs


def transformer_flops(
    num_params: int,
    num_layers: int,
    hidden_size: int,
    tokens: int,
    seq_len: int,
    *,
    backward: bool,
) -> float:
    """Model FLOPs of a forward (and backward) pass over `tokens` tokens.

    `num_params`: weights the tokens are multiplied by (exclude the input embedding
    table, which is a lookup); `seq_len`: the (mean) padded sequence length the
    attention runs over. Forward = `2 N + 2 L S H` per token; backward adds twice that.
    """
    per_token = 2.0 * num_params + 2.0 * num_layers * seq_len * hidden_size
    return per_token * tokens * (3.0 if backward else 1.0)


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak FLOP/s of one `device` for `dtype` compute, or None when unknown (CPU, unlisted GPU)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    for pattern, table in _PEAK_FLOPS:
        if pattern in name:
            return table[key]
    return None


def mfu(flops: float, seconds: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation of one device: achieved FLOP/s over its peak. None if the peak is unknown."""
    if peak_flops is None or seconds <= 0:
        return None
    return flops / seconds / peak_flops


# ----------------------------------------------------------------------------- one call


@dataclass
class Measurement:
    """What `measure` recorded for one call; `stats(...)` turns it into the reported dict."""

    device: torch.device
    """Device whose CUDA peak memory is read."""
    start: float = field(default_factory=time.perf_counter)
    """perf_counter() at entry."""
    rss_before: int = 0
    """Host RSS at entry, bytes."""
    seconds: float = 0.0
    """Wall time of the block (set at exit)."""
    rss_after: int = 0
    """Host RSS at exit, bytes."""
    cuda_peak: int = 0
    """CUDA max allocated during the block, bytes (0 off CUDA)."""

    def stats(
        self,
        prefix: str,
        *,
        tokens: int = 0,
        flops: float = 0.0,
        peak_flops: float | None = None,
    ) -> dict[str, float]:
        """Flat `{prefix/name: value}` dict: seconds, tokens, tokens_per_s, memory (GiB), flops, mfu."""
        out = {
            "seconds": self.seconds,
            "tokens": float(tokens),
            "tokens_per_s": tokens / self.seconds if self.seconds > 0 else 0.0,
            "host_rss_gb": max(self.rss_before, self.rss_after) / _GIB,
            "host_peak_rss_gb": host_peak_rss_bytes() / _GIB,
            "cuda_peak_gb": self.cuda_peak / _GIB,
            "flops": float(flops),
        }
        utilisation = mfu(flops, self.seconds, peak_flops)
        if utilisation is not None:
            out["mfu"] = utilisation
        return {f"{prefix}/{key}": value for key, value in out.items()}


@contextmanager
def measure(device: torch.device) -> Iterator[Measurement]:
    """Time a block and record host RSS and the CUDA peak on `device` over it.

    ```python
    with measure(device) as m:
        ...
    stats = m.stats("actor/update", tokens=n, flops=f, peak_flops=device_peak_flops(device, dtype))
    ```
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    cuda_reset_peak(device)
    m = Measurement(device=device, rss_before=host_rss_bytes())
    m.start = time.perf_counter()
    try:
        yield m
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # queued kernels belong to this call's time
        m.seconds = time.perf_counter() - m.start
        m.rss_after = host_rss_bytes()
        m.cuda_peak = cuda_peak_bytes(device)


__all__ = [
    "host_rss_bytes",
    "host_peak_rss_bytes",
    "cuda_reset_peak",
    "cuda_peak_bytes",
    "transformer_flops",
    "device_peak_flops",
    "mfu",
    "Measurement",
    "measure",
]
