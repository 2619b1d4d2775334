"""The compute floor of one RL step: matmul FLOPs counted from the model shape, over this machine's fp32 matmul rate.

    .venv/bin/python -m benchmarks.compute_floor --size 1m --threads 2 --verify

What is counted (the minimum work of one GRPO step with one update per step):
- generation: the forward of every real prompt and generated token except the last
  generated one (it is never fed back), the LM head only where a token is sampled;
- reference log-probs: one forward over the same positions (LM head on completion positions);
- policy forward + backward: 3 forwards' worth (the backward computes input and weight
  gradients, 2x the forward);
- old log-probs: nothing. With one update per step the behaviour policy IS the current
  policy, so its log-probs come out of the policy forward for free (TRL does this; a
  framework that runs a separate forward does extra work above the floor).
Only matrix multiplications count (linear layers, QK^T, AV, LM head); norms, rotary,
softmax and the optimizer are elementwise and are left out. Attention is causal: position
j attends to j+1 positions. `--verify` checks the per-forward count against
`torch.utils.flop_counter.FlopCounterMode` on the real model.

The floor time is FLOPs / (the fp32 matmul peak measured in the same process: `threads`
x the fastest single-thread call of a 256/512 square matmul, see `measure_peak_rate`): no
implementation can beat it on this machine. The rate at the step's own small shapes is
printed too (on a CPU they run below the peak), for the record.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelShape:
    """The matmul-relevant shape of a decoder-only transformer."""

    hidden: int
    """Width of the residual stream (d)."""
    layers: int
    """Decoder layers."""
    heads: int
    """Query heads."""
    kv_heads: int
    """Key/value heads."""
    head_dim: int
    """Width of one head."""
    ffn: int
    """Width of the SwiGLU feed-forward layer."""
    vocab: int
    """Vocabulary size (rows of the LM head)."""

    @classmethod
    def of(cls, config) -> "ModelShape":
        """From a transformers config (Qwen2/Llama)."""
        heads = config.num_attention_heads
        return cls(
            hidden=config.hidden_size, layers=config.num_hidden_layers, heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            ffn=config.intermediate_size, vocab=config.vocab_size,
        )


def linear_flops_per_position(m: ModelShape) -> int:
    """Matmul FLOPs of the decoder layers for one token position (2 FLOPs per multiply-add)."""
    q_out, kv_out = m.heads * m.head_dim, m.kv_heads * m.head_dim
    attn_proj = m.hidden * q_out + 2 * m.hidden * kv_out + q_out * m.hidden  # q, k, v, o
    mlp = 3 * m.hidden * m.ffn  # gate, up, down
    return 2 * m.layers * (attn_proj + mlp)


def attention_flops(m: ModelShape, context: int) -> int:
    """QK^T and AV FLOPs of one query position that attends to `context` positions, over all layers."""
    return 2 * 2 * m.layers * m.heads * m.head_dim * context


def lm_head_flops(m: ModelShape) -> int:
    """FLOPs of the LM head (hidden -> vocab) at one position."""
    return 2 * m.hidden * m.vocab


def forward_flops(m: ModelShape, positions: int, logit_positions: int, *, causal: bool = True) -> int:
    """Matmul FLOPs of one forward over a sequence of `positions` tokens, logits at `logit_positions` of them.

    causal=True counts position j (1-based) as attending to j positions (the minimum);
    causal=False counts every position attending to all `positions` (what a dense eager
    attention computes before masking).
    """
    if positions < 0 or logit_positions < 0 or logit_positions > positions:
        raise ValueError(f"forward_flops: positions={positions}, logit_positions={logit_positions}: "
                         "need 0 <= logit_positions <= positions")
    attended = positions * (positions + 1) // 2 if causal else positions * positions
    return positions * linear_flops_per_position(m) + attention_flops(m, attended) + logit_positions * lm_head_flops(m)


@dataclass(frozen=True)
class StepFlops:
    """Matmul FLOPs of one RL step, by stage."""

    generate: float
    """Sampling the completions (KV-cached: each position is computed once)."""
    reference: float
    """Reference-model forward."""
    policy: float
    """Policy forward + backward (3 forwards)."""

    @property
    def total(self) -> float:
        """All stages."""
        return self.generate + self.reference + self.policy


def step_flops(m: ModelShape, batch: int, prompt_len: float, completion_len: float) -> StepFlops:
    """FLOPs of one step over `batch` samples with these MEAN real prompt/completion lengths (tokens).

    Each sample's forward covers prompt_len + completion_len - 1 positions (the last
    completion token is only ever a label) with logits at the completion_len positions that
    predict completion tokens. Means are used for the (2 %-sized) quadratic attention term.
    """
    if batch < 1 or prompt_len < 1 or completion_len < 1:
        raise ValueError(f"step_flops: batch={batch}, prompt_len={prompt_len}, completion_len={completion_len}: "
                         "each must be >= 1")
    positions = prompt_len + completion_len - 1
    n = round(positions)
    one = (positions * linear_flops_per_position(m) + attention_flops(m, n * (n + 1) // 2)
           + completion_len * lm_head_flops(m))
    fwd = batch * one
    return StepFlops(generate=fwd, reference=fwd, policy=3 * fwd)


# ---------------------------------------------------------------------------------------------------------------
# Measured matmul rate
# ---------------------------------------------------------------------------------------------------------------


def measure_matmul_rate(threads: int, shape: tuple[int, int, int] = (1024, 1024, 1024), seconds: float = 1.0) -> dict:
    """fp32 (m, k) @ (k, n) in a loop for ~`seconds`: {"best": GFLOP/s of the fastest call, "median": ...}.

    The best call is the rate the machine can deliver; the median shows how much a
    shared machine took away while measuring.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        m, k, n = shape
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        for _ in range(3):  # warm-up: thread pool, caches
            torch.mm(a, b, out=out)
        times, deadline = [], time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(times) < 5:
            t0 = time.perf_counter()
            torch.mm(a, b, out=out)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    times.sort()
    flops = 2.0 * m * k * n
    return {"best": flops / times[0] / 1e9, "median": flops / times[len(times) // 2] / 1e9, "calls": len(times),
            "shape": list(shape), "threads": threads}


PEAK_SHAPES = ((256, 256, 256), (512, 512, 512))
"""Square matmuls tried for the per-core peak: they fit the 1 MiB L2 of a core, so the best call is compute-bound."""


def measure_peak_rate(threads: int, seconds: float = 1.0) -> dict:
    """This machine's fp32 matmul peak for `threads` cores: threads x the best single-thread call of `PEAK_SHAPES`.

    Why not time `threads` threads directly: on this shared 2-core machine a multi-thread
    call only reaches the peak when no neighbour runs at that instant (measured: 172-178
    GFLOP/s with 2 threads when it happens, 2-90 otherwise), while one thread finds one
    free core reliably (93-95 GFLOP/s in every run; 3 GHz x 2 FMA x 8 fp32 lanes x 2 = 96
    by the book). The floor is the fastest possible step, so it uses the ideal rate.
    The direct `threads`-thread best is returned too, for the record.
    """
    per = max((measure_matmul_rate(1, s, seconds / (2 * len(PEAK_SHAPES))) for s in PEAK_SHAPES),
              key=lambda r: r["best"])
    direct = max((measure_matmul_rate(threads, s, seconds / (2 * len(PEAK_SHAPES))) for s in PEAK_SHAPES),
                  key=lambda r: r["best"])
    return {"best": threads * per["best"], "per_core_best": per["best"], "direct_best": direct["best"],
            "median": direct["median"], "shape": per["shape"], "threads": threads}


def step_shapes(m: ModelShape, batch: int, positions: int) -> dict[str, tuple[int, int, int]]:
    """Representative matmul shapes of the step: the FFN up-projection in training and in one decode step."""
    return {"train_ffn": (batch * positions, m.hidden, m.ffn), "decode_ffn": (batch, m.hidden, m.ffn)}


def floor_report(m: ModelShape, batch: int, prompt_len: float, completion_len: float, threads: int,
                 seconds: float = 1.0) -> dict:
    """FLOPs by stage, measured rates and the floor time of one step (all in one dict)."""
    f = step_flops(m, batch, prompt_len, completion_len)
    peak = measure_peak_rate(threads, seconds=seconds)
    positions = round(prompt_len + completion_len - 1)
    shaped = {name: measure_matmul_rate(threads, s, seconds=seconds / 2)
              for name, s in step_shapes(m, batch, positions).items()}
    return {
        "model": asdict(m), "batch": batch, "prompt_len": prompt_len, "completion_len": completion_len,
        "flops": {"generate": f.generate, "reference": f.reference, "policy": f.policy, "total": f.total},
        "rate_gflops": {"peak": peak, **shaped},
        "floor_s": f.total / (peak["best"] * 1e9),
    }


def verify_against_flop_counter(model, batch: int = 4, seq: int = 22) -> tuple[int, int]:
    """(our count, torch's FlopCounterMode count) for one plain forward with logits everywhere; they must be equal.

    Runs the model with eager attention, which computes the full (seq x seq) score matrix:
    compared with causal=False.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    impl = model.config._attn_implementation
    model.config._attn_implementation = "eager"
    try:
        ids = torch.randint(0, model.config.vocab_size, (batch, seq))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(input_ids=ids)
    finally:
        model.config._attn_implementation = impl
    ours = batch * forward_flops(ModelShape.of(model.config), seq, seq, causal=False)
    return ours, counter.get_total_flops()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1m", choices=["1m", "9m"])
    p.add_argument("--batch", type=int, default=64, help="samples per step (prompts x samples per prompt)")
    p.add_argument("--prompt-len", type=float, default=5.8, help="mean real prompt tokens (a+b= is 4..6 chars)")
    p.add_argument("--completion-len", type=float, default=16.0, help="mean generated tokens incl. EOS")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--verify", action="store_true", help="check the count against torch's FlopCounterMode")
    a = p.parse_args(argv)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.reference_work import DEFAULT_WORKDIR, ReferenceWork, build_reference

    model_dir, _ = build_reference(ReferenceWork(size=a.size), DEFAULT_WORKDIR)
    shape = ModelShape.of(AutoConfig.from_pretrained(model_dir))
    report = floor_report(shape, a.batch, a.prompt_len, a.completion_len, a.threads)
    if a.verify:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        ours, torch_count = verify_against_flop_counter(model)
        report["verify"] = {"ours": ours, "flop_counter": torch_count, "equal": ours == torch_count}
    fl, rate = report["flops"], report["rate_gflops"]
    print(f"model {a.size} {shape}; batch {a.batch}, prompt {a.prompt_len} + completion {a.completion_len} tokens")
    for k in ("generate", "reference", "policy", "total"):
        print(f"  {k:>10}: {fl[k] / 1e9:8.2f} GFLOP")
    pk = rate["peak"]
    print(f"  peak rate: {pk['best']:.1f} GFLOP/s = {pk['threads']} x {pk['per_core_best']:.1f} per core "
          f"(measured directly with {pk['threads']} threads: best {pk['direct_best']:.1f}, median {pk['median']:.1f})")
    for k in ("train_ffn", "decode_ffn"):
        r = rate[k]
        print(f"  rate at {k:>10} {tuple(r['shape'])}: best {r['best']:6.1f} GFLOP/s, median {r['median']:6.1f} "
              f"({r['threads']} threads)")
    print(f"  floor: {report['floor_s']:.3f} s per step at the peak rate")
    if a.verify:
        v = report["verify"]
        verdict = "equal" if v["equal"] else "DIFFERENT"
        print(f"  verify: ours {v['ours']} vs FlopCounterMode {v['flop_counter']}: {verdict}")
    print("BENCH_JSON " + json.dumps(report))


if __name__ == "__main__":
    main()
