"""Descriptions of accelerators and clusters for the planner's cost model.

A `DeviceSpec` is a handful of numbers (peak rate, memory bandwidth, memory,
interconnect, fixed overheads); a `ClusterSpec` is a device times a node layout.
The GPU numbers are vendor datasheet values (dense BF16, no sparsity) scaled by
efficiency factors; the local CPU is described by a calibration
(`rlkit.planner.calibrate`), never by guesses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

GiB = 1024**3


@dataclass(frozen=True)
class DeviceSpec:
    """One accelerator (or one CPU slot) as the cost model sees it."""

    name: str
    """Human-readable name, e.g. "A100-80GB"."""
    peak_flops: float
    """Dense matmul rate in the compute dtype, FLOP/s (datasheet for GPUs, measured for the CPU)."""
    mem_bandwidth: float
    """Device memory bandwidth, bytes/s."""
    memory: float
    """Device memory, bytes (what the vendor quotes, before headroom)."""
    intra_node_bandwidth: float
    """Collective bus bandwidth per device inside a node (NVLink), bytes/s."""
    inter_node_bandwidth: float
    """Collective bus bandwidth per device across nodes (InfiniBand share of one device), bytes/s."""
    dtype_bytes: int = 2
    """Bytes per weight/activation element in the compute dtype (2 for bf16, 4 for fp32 on CPU)."""
    flops_efficiency: float = 0.6
    """Fraction of `peak_flops` that transformer GEMMs reach in practice (MFU ceiling)."""
    bandwidth_efficiency: float = 0.8
    """Fraction of `mem_bandwidth` that streaming kernels (decode, elementwise) reach."""
    overlap_memory_compute: bool = True
    """Whether weight/KV streaming overlaps the math (GPU kernels: time = max of the two; CPU BLAS: their sum)."""
    elementwise_rate: float | None = None
    """Elements/s (read + written) of simple elementwise kernels (norms, residual adds, rotary); None = bandwidth."""
    activation_rate: float | None = None
    """Outputs/s of the gated activation silu(gate) * up; None = bandwidth-bound (3 elements moved per output)."""
    backward_compute_factor: float = 2.0
    """Backward compute as a multiple of the forward's (2 for matmuls: gradients w.r.t. inputs and weights)."""
    usable_memory_fraction: float = 0.9
    """Fraction of `memory` the planner may fill (allocator fragmentation, CUDA context, buffers)."""
    collective_latency: float = 10e-6
    """Fixed cost of one collective call (one ring step of a small message), seconds."""
    forward_call_overhead: float = 0.0
    """Fixed host cost of one model forward call (dispatch, embedding, python), seconds."""
    forward_layer_overhead: float = 0.0
    """Fixed host cost per decoder layer per forward call (kernel launches that compute does not hide), seconds."""
    backward_overhead_factor: float = 2.0
    """Backward pass fixed cost as a multiple of the forward's (about twice the kernels)."""
    optimizer_overhead: float = 0.0
    """Fixed host cost of one optimizer update, seconds."""
    optimizer_layer_overhead: float = 0.0
    """Fixed host cost of one optimizer update per decoder layer (per-tensor kernel launches), seconds."""
    generate_call_overhead: float = 0.0
    """Fixed cost of starting one generation call (argument checks, cache allocation), seconds per wave."""
    decode_step_overhead: float = 0.0
    """Fixed cost of one generated-token step besides the layers (sampling, cache bookkeeping, scheduler), seconds."""
    decode_layer_overhead: float = 0.0
    """Fixed cost per decoder layer per generated-token step (launches not hidden by CUDA graphs), seconds."""

    @property
    def usable_memory(self) -> float:
        """Bytes the planner may fill on one device."""
        return self.memory * self.usable_memory_fraction

    def with_dtype_bytes(self, dtype_bytes: int) -> DeviceSpec:
        """The same device computing in another dtype (4: fp32, 2: bf16)."""
        return replace(self, dtype_bytes=dtype_bytes)


# Datasheet numbers (dense BF16 tensor-core FLOP/s, HBM bandwidth). Interconnect: NVLink bus bandwidth a ring
# collective reaches (~80 % of the per-GPU unidirectional NVLink figure) and one 200/400 Gb/s NIC per GPU.
# Overheads: launches of large training kernels are hidden by asynchronous execution; decoding runs with CUDA
# graphs (vLLM), leaving a few microseconds per layer and a scheduler/sampling cost per step.
A100_80GB = DeviceSpec(
    name="A100-80GB",
    peak_flops=312e12,
    mem_bandwidth=2.039e12,
    memory=80 * GiB,
    intra_node_bandwidth=240e9,
    inter_node_bandwidth=25e9,
    decode_step_overhead=2e-3,
    decode_layer_overhead=10e-6,
)
H100 = DeviceSpec(
    name="H100",
    peak_flops=989e12,
    mem_bandwidth=3.35e12,
    memory=80 * GiB,
    intra_node_bandwidth=360e9,
    inter_node_bandwidth=50e9,
    decode_step_overhead=1.5e-3,
    decode_layer_overhead=8e-6,
)
H200 = replace(H100, name="H200", mem_bandwidth=4.8e12, memory=141e9)

GPU_DEVICES: dict[str, DeviceSpec] = {d.name: d for d in (A100_80GB, H100, H200)}

# The paper's cluster (§8.1, as recalled; not in PAPER.md): 16 machines of 8 A100-80GB with 600 GB/s NVLink and
# 200 Gb/s between machines, i.e. 25 GB/s per machine shared by its 8 GPUs when all of them talk across nodes.
HYBRIDFLOW_TESTBED = replace(A100_80GB, name="A100-80GB (HybridFlow testbed)", inter_node_bandwidth=200e9 / 8 / 8)


def get_device(name: str | DeviceSpec) -> DeviceSpec:
    """A device preset by name ("A100-80GB", "H100", "H200", "cpu"), case-insensitive; a DeviceSpec passes through.

    "cpu" is this machine, described by its cached calibration (measured once; see `calibrate`).
    """
    if isinstance(name, DeviceSpec):
        return name
    key = name.strip().lower()
    if key == "cpu":
        from rlkit.planner.calibrate import calibrate, cpu_device  # lazy: measuring needs torch

        return cpu_device(calibrate())
    for preset_name, spec in GPU_DEVICES.items():
        if key in (preset_name.lower(), preset_name.lower().replace("-", "")):
            return spec
    if key in ("a100", "a100-80g", "a100_80gb"):
        return A100_80GB
    raise ValueError(f"unknown device {name!r}: choose one of {[*GPU_DEVICES, 'cpu']} or pass a DeviceSpec")


def detect_gpu() -> DeviceSpec:
    """The preset matching CUDA device 0 of this host (by name), with its real memory size."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("detect_gpu: no CUDA device on this host; describe the device with get_device(...)")
    props = torch.cuda.get_device_properties(0)
    name = props.name.upper()
    base = H200 if "H200" in name else H100 if "H100" in name else A100_80GB
    return replace(base, name=props.name, memory=float(props.total_memory))


@dataclass(frozen=True)
class ClusterSpec:
    """Homogeneous devices laid out in nodes (the paper's N GPUs, U per machine)."""

    device: DeviceSpec
    """The device every slot holds."""
    nodes: int
    """Number of machines."""
    devices_per_node: int
    """Devices per machine (U): tensor parallelism stays inside one node."""

    def __post_init__(self):
        if self.nodes < 1 or self.devices_per_node < 1:
            raise ValueError(
                f"ClusterSpec needs nodes >= 1 and devices_per_node >= 1, got {self.nodes} x {self.devices_per_node}"
            )

    @property
    def num_devices(self) -> int:
        """N: all devices of the cluster."""
        return self.nodes * self.devices_per_node

    def group_bandwidth(self, group_size: int, stride: int = 1) -> float:
        """Bus bandwidth of a collective over `group_size` ranks `stride` apart (ranks fill nodes in order)."""
        spans_nodes = group_size * stride > self.devices_per_node
        return self.device.inter_node_bandwidth if spans_nodes else self.device.intra_node_bandwidth

    def __str__(self) -> str:
        return f"{self.nodes}x{self.devices_per_node} {self.device.name}"


def cluster(device: str | DeviceSpec, num_devices: int, devices_per_node: int | None = None) -> ClusterSpec:
    """`num_devices` devices of one kind, `devices_per_node` (default 8, fewer if the cluster is smaller) per node."""
    spec = get_device(device)
    per_node = devices_per_node or min(8, num_devices)
    if num_devices < 1 or num_devices % per_node:
        raise ValueError(f"cluster: {num_devices} devices do not fill whole nodes of {per_node}")
    return ClusterSpec(spec, num_devices // per_node, per_node)


_CLUSTER_RE = re.compile(r"^\s*(\d+)\s*[x*]\s*(.+?)\s*$", re.IGNORECASE)


def parse_cluster(text: str, devices_per_node: int | None = None) -> ClusterSpec:
    """A cluster from text like "128xA100-80GB" or "16 x H100" (8 devices per node unless told)."""
    m = _CLUSTER_RE.match(text)
    if not m:
        raise ValueError(f"cannot read cluster {text!r}: write it as '<count>x<device>', e.g. '128xA100-80GB'")
    return cluster(m.group(2), int(m.group(1)), devices_per_node)


def ring_allreduce_time(nbytes: float, group: int, bandwidth: float, latency: float) -> float:
    """Seconds for a ring all-reduce of `nbytes` per rank over `group` ranks (2(g-1)/g of the data crosses a link)."""
    if group <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (group - 1) / group * nbytes / bandwidth + 2 * math.ceil(math.log2(group)) * latency


def allgather_time(nbytes_total: float, group: int, bandwidth: float, latency: float) -> float:
    """Seconds to all-gather a buffer of `nbytes_total` (each rank holds 1/g of it) over `group` ranks."""
    if group <= 1 or nbytes_total <= 0:
        return 0.0
    return (group - 1) / group * nbytes_total / bandwidth + math.ceil(math.log2(group)) * latency
