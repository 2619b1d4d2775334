"""Describe this machine by measuring it, and check the cost model against measured stage times.

`calibrate()` runs a few micro-benchmarks once (a matmul, a memory copy, tiny
transformers forward / forward+backward / generate at two depths to separate
per-call from per-layer overheads) and caches the numbers in a json file under
the user cache dir (`$RLKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/rlkit`, else
`~/.cache/rlkit`), keyed by host, torch version and thread count; `force=True`
measures again. `cpu_device()` turns a calibration into a `DeviceSpec`.

`measure_stages()` times the three stages of a real transformers model on this
CPU (log-prob forward, forward+backward+Adam step, `generate` with KV cache) and
`predict_stages()` asks the cost model for the same; the planner's tests compare
the two. The calibration models are deliberately of other shapes than the ones
checked (hidden 32, 1 and 4 layers, batch 1), so the check is not circular.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from rlkit.planner.cost_model import ModelSpec, Strategy, Workload, generate_cost, infer_cost, train_cost
from rlkit.planner.devices import ClusterSpec, DeviceSpec

_CAL_FILE = "planner-calibration.json"


@dataclass(frozen=True)
class Calibration:
    """Numbers measured on this machine (fp32, `threads` torch threads)."""

    matmul_flops: float
    """FLOP/s of fp32 `F.linear` on layer-sized shapes (512 rows, 384 <-> 1536), weights in cache."""
    mem_bandwidth: float
    """Bytes/s at which 8-row `F.linear` streams 72 MiB of weights (a decode step), net of its math."""
    elementwise_rate: float
    """Elements/s read + written by eager RMSNorm + residual add."""
    activation_rate: float
    """Outputs/s of silu(a) * b."""
    backward_compute_factor: float
    """Backward / forward time of a SwiGLU block (matmuls + activation)."""
    forward_call_overhead: float
    """Seconds of a forward call beyond its layers (batch 1, 8 tokens: no compute to speak of)."""
    forward_layer_overhead: float
    """Seconds per decoder layer per forward call (slope over depth)."""
    backward_overhead_factor: float
    """Backward per-layer overhead over the forward's."""
    optimizer_overhead: float
    """Seconds of an AdamW step beyond its layers' parameters."""
    optimizer_layer_overhead: float
    """Seconds of an AdamW step per decoder layer's parameter tensors (beyond moving their bytes)."""
    generate_call_overhead: float
    """Seconds `generate` spends once per call besides the prefill forward and the steps."""
    decode_step_overhead: float
    """Seconds per generated token beyond its layers (sampling, cache bookkeeping)."""
    decode_layer_overhead: float
    """Seconds per decoder layer per generated token."""
    threads: int
    """torch threads during the measurement (the machine is described per thread count)."""
    memory: float
    """Host RAM in bytes."""
    key: str = ""
    """Host, torch version and threads the numbers belong to."""
    measured_at: float = 0.0
    """Unix time of the measurement."""


def cache_path() -> Path:
    """The json file calibrations are cached in."""
    root = os.environ.get("RLKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rlkit")
    return Path(root) / _CAL_FILE


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` torch intra-op threads (None: leave as is), restoring the old count."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _clock():
    """CPU time of this process when torch runs one thread, else wall time.

    On a shared machine other processes steal the core: with one thread the process's own CPU time is what the
    work costs on an idle core, and it hardly moves with the load of others. With several threads CPU time
    would sum them, so wall time is used (and is noisier).
    """
    import torch

    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


def _best_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    # min, not mean: other processes on a shared machine only ever add time
    clock = _clock()
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        fn()
        best = min(best, clock() - t0)
    return best


def _micro_model(layers: int, hidden: int = 32, vocab: int = 64):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=2 * hidden,
                      num_attention_heads=2, num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=0, eos_token_id=None, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(cfg).eval()


def _logprob_loss(model, ids):
    import torch

    logits = model(ids).logits[:, :-1].float()  # (B, s-1, V)
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).mean()


def _generate(model, ids, new_tokens: int):
    import torch

    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def _measure_kernels() -> dict[str, float]:
    """Rates of the kernel families the cost model distinguishes, on shapes unlike the checked models."""
    import torch
    import torch.nn.functional as F

    h, f, m = 384, 1536, 512
    x, z, up_w, down_w = torch.randn(m, h), torch.randn(m, f), torch.randn(f, h), torch.randn(h, f)
    with torch.no_grad():
        gemm = 4 * m * h * f / _best_time(lambda: (F.linear(x, up_w), F.linear(z, down_w)))
        # weight streaming: 8 rows (a decode batch) through 72 MiB of weights (beyond the caches); the bandwidth
        # is what is left after the math at the GEMM rate (the CPU model adds the two)
        weights = [torch.randn(f, h) if i % 2 else torch.randn(h, f) for i in range(32)]
        rows = {h: torch.randn(8, h), f: torch.randn(8, f)}
        t8 = _best_time(lambda: [F.linear(rows[w.shape[1]], w) for w in weights])
        nbytes = sum(w.numel() for w in weights) * 4
        stream = nbytes / max(t8 - 2 * 8 * nbytes / 4 / gemm, 0.2 * t8)
        # RMSNorm + residual add as eager PyTorch runs them: 10 elements read or written per element
        y, r, g = torch.randn(4096, h), torch.randn(4096, h), torch.randn(h)

        def norm_add():
            return g * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6)) + r

        elementwise = 10 * y.numel() / _best_time(norm_add)
        a, b = torch.randn(m, f), torch.randn(m, f)
        activation = a.numel() / _best_time(lambda: F.silu(a) * b)
    # backward / forward of a SwiGLU block (matmuls and activation together)
    w1, w3, w2 = (torch.randn(f, h, requires_grad=True), torch.randn(f, h, requires_grad=True),
                  torch.randn(h, f, requires_grad=True))
    xg = torch.randn(m, h, requires_grad=True)

    def block():
        return F.linear(F.silu(F.linear(xg, w1)) * F.linear(xg, w3), w2)

    with torch.no_grad():
        fwd = _best_time(block)

    def fwd_bwd():
        block().sum().backward()

    backward = max(_best_time(fwd_bwd) / fwd - 1, 1.0)
    return {"matmul_flops": gemm, "mem_bandwidth": stream, "elementwise_rate": elementwise,
            "activation_rate": activation, "backward_compute_factor": backward}


def _measure_overheads() -> dict[str, float]:
    """Per-call and per-layer host costs from tiny transformers models at two depths (batch 1, 8 tokens)."""
    import torch

    ids = torch.randint(1, 64, (1, 8))
    fwd, fb, gen4, gen16, opt = {}, {}, {}, {}, {}
    models = {layers: _micro_model(layers) for layers in (1, 4)}
    optims = {layers: torch.optim.AdamW(m.parameters(), lr=1e-6) for layers, m in models.items()}
    for _ in range(2):  # interleave depths so that load changes hit both alike
        for layers, model in models.items():
            with torch.no_grad():
                fwd[layers] = min(fwd.get(layers, 1e9), _best_time(lambda m=model: m(ids), repeat=7))
                gen4[layers] = min(gen4.get(layers, 1e9),
                                   _best_time(lambda m=model: _generate(m, ids, 4), repeat=3))
                gen16[layers] = min(gen16.get(layers, 1e9),
                                    _best_time(lambda m=model: _generate(m, ids, 16), repeat=3))

            def step(m=model):
                m.zero_grad(set_to_none=True)
                _logprob_loss(m, ids).backward()

            fb[layers] = min(fb.get(layers, 1e9), _best_time(step, repeat=7))
            opt[layers] = min(opt.get(layers, 1e9), _best_time(optims[layers].step, repeat=7))
    layer = max((fwd[4] - fwd[1]) / 3, 1e-6)
    call = max(fwd[1] - layer, 0.0)
    fb_layer = max((fb[4] - fb[1]) / 3, layer)
    steps = {L: max((gen16[L] - gen4[L]) / 12, 0.0) for L in (1, 4)}
    dec_layer = max((steps[4] - steps[1]) / 3, 0.0)
    opt_layer = max((opt[4] - opt[1]) / 3, 0.0)
    return {"optimizer_overhead": max(opt[1] - opt_layer, 0.0), "optimizer_layer_overhead": opt_layer,
            "forward_call_overhead": call, "forward_layer_overhead": layer,
            "backward_overhead_factor": fb_layer / layer - 1,
            "generate_call_overhead": max(gen4[1] - 3 * steps[1] - fwd[1], 0.0),
            "decode_step_overhead": max(steps[1] - dec_layer, 0.0), "decode_layer_overhead": dec_layer}


def _measure(threads: int) -> Calibration:
    import psutil

    with torch_threads(threads):
        kernels = _measure_kernels()
        overheads = _measure_overheads()
    return Calibration(**kernels, **overheads, threads=threads, memory=float(psutil.virtual_memory().total),
                       measured_at=time.time())


def calibrate(force: bool = False, path: str | os.PathLike | None = None, threads: int | None = None) -> Calibration:
    """This machine's calibration at `threads` torch threads (default: the current count), measured once and cached.

    `force=True` measures again and overwrites the cached entry; `path` overrides the cache file.
    """
    import torch

    threads = threads or torch.get_num_threads()
    key = f"{platform.node()}|torch-{torch.__version__}|threads-{threads}"
    file = Path(path) if path is not None else cache_path()
    entries = {}
    if file.exists():
        try:
            entries = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError):
            entries = {}  # a corrupt cache is re-measured, not an error
    if not force and key in entries:
        try:
            return Calibration(**entries[key])
        except TypeError:
            pass  # written by another version of this class: measure again
    cal = _measure(threads)
    cal = Calibration(**{**asdict(cal), "key": key})
    entries[key] = asdict(cal)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(file)
    return cal


def cpu_device(cal: Calibration, devices_per_node: int = 1) -> DeviceSpec:
    """This CPU as a device: measured rates and overheads (fp32), RAM shared by `devices_per_node` slots.

    The rates are measured on the kernels themselves, so no efficiency factor applies; eager CPU matmuls do not
    overlap weight streaming with math (time = sum). Collectives (gloo over TCP) are not measured: 1 GB/s and
    100 us per call are assumed.
    """
    return DeviceSpec(
        name=f"cpu ({cal.threads} thread{'s' if cal.threads > 1 else ''})",
        peak_flops=cal.matmul_flops, mem_bandwidth=cal.mem_bandwidth, memory=cal.memory / devices_per_node,
        intra_node_bandwidth=1e9, inter_node_bandwidth=1e9, dtype_bytes=4, flops_efficiency=1.0,
        bandwidth_efficiency=1.0, usable_memory_fraction=0.8, collective_latency=100e-6,
        overlap_memory_compute=False, elementwise_rate=cal.elementwise_rate, activation_rate=cal.activation_rate,
        backward_compute_factor=cal.backward_compute_factor,
        forward_call_overhead=cal.forward_call_overhead, forward_layer_overhead=cal.forward_layer_overhead,
        backward_overhead_factor=cal.backward_overhead_factor, optimizer_overhead=cal.optimizer_overhead,
        optimizer_layer_overhead=cal.optimizer_layer_overhead, generate_call_overhead=cal.generate_call_overhead,
        decode_step_overhead=cal.decode_step_overhead, decode_layer_overhead=cal.decode_layer_overhead,
    )


# ----------------------------------------------------------------------------------------------------------------
# Predicted vs measured stage times on this machine
# ----------------------------------------------------------------------------------------------------------------


def measure_stages(hf_config, batch: int, prompt_len: int, response_len: int, threads: int | None = None,
                   repeat: int = 3) -> dict[str, float]:
    """Seconds of the three stages of a real model built from `hf_config` on this CPU, single process, fp32.

    "infer": one forward over `batch` sequences of prompt+response tokens and their log-probs;
    "train": forward + backward + AdamW step on the same batch;
    "generate": `generate` with KV cache, `response_len` new tokens (greedy, no early stop) from `batch` prompts.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
        ids = torch.randint(1, hf_config.vocab_size, (batch, prompt_len + response_len))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    out = {}
    with torch_threads(threads):
        with torch.no_grad():
            out["infer"] = _best_time(lambda: _logprob_loss(model, ids), repeat=repeat)

        def train_step():
            opt.zero_grad(set_to_none=True)
            _logprob_loss(model, ids).backward()
            opt.step()

        out["train"] = _best_time(train_step, repeat=repeat)
        with torch.no_grad():
            out["generate"] = _best_time(lambda: _generate(model, ids[:, :prompt_len], response_len),
                                         repeat=repeat)
    return out


def predict_stages(model: ModelSpec, batch: int, prompt_len: int, response_len: int,
                   device: DeviceSpec) -> dict[str, float]:
    """The cost model's seconds for the stages `measure_stages` times (one device, the whole batch at once)."""
    wl = Workload(prompts=batch, prompt_len=prompt_len, response_len=response_len, micro_batch=batch,
                  infer_micro_batch=batch)
    cl = ClusterSpec(device, 1, 1)
    one = Strategy(1)
    gen = generate_cost(model, 1, 1, wl, cl, kv_budget=device.usable_memory)
    return {"infer": infer_cost(model, one, wl, cl).time, "train": train_cost(model, one, wl, cl).time,
            "generate": gen.time}
