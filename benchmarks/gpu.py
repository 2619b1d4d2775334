"""The GPU figures of issue 8 on one CUDA device: policy-update MFU, hf-engine generation against the HBM
roofline, and the weight sync against one plain copy of the model's bytes.

    python -m benchmarks.gpu                              # Qwen2.5-0.5B shape, bf16, the CUDA device
    python -m benchmarks.gpu --shape tiny --device cpu    # the same code path on CPU in seconds (CI smoke test)

Model: built from a Qwen2 config with the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 query / 2 KV heads,
FFN 4864, vocabulary 151936, tied embeddings), random init, bf16 on CUDA (fp32 on CPU), saved with rlkit's
character tokenizer (ids 0..102; the larger vocabulary only costs what the real model's would). It runs in a
`Session` with the local backend (one rank in this process, FSDP2 over a world of one), so the measured code
is the actor's own: `update_actor`, `rollout` on the hf engine, and its in-place gather ("sync").

Figures (one JSON line, `GPU_JSON {...}`, and a readable table):
- train: `update_actor` on `--train-batch` sequences of `--train-tokens` tokens (half prompt, half response),
  one optimizer step; MFU = matmul FLOPs of forward + backward (3 forwards, `benchmarks.compute_floor`) over
  the median time and the device's dense bf16 peak (`rlkit.planner.devices`).
- generate: `rollout` of `--gen-tokens` new tokens for each batch in `--gen-batches`; roofline = the time
  to read every parameter once per decode step plus the KV cache each step attends to, at the device's HBM
  bandwidth; reported as measured tokens/s over roofline tokens/s.
- sync: the hf engine's last in-place gather (seconds, bytes, measured peak extra memory), and its ratio to
  the time of copying every parameter once into a preallocated buffer on the same device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768,
                         rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=512, max_position_embeddings=2048, tie_word_embeddings=True),
}


def build_model_folder(shape: str, folder: Path, dtype: torch.dtype, seed: int = 0) -> Path:
    """A Qwen2 model of `shape` (random init, `dtype`) and rlkit's char tokenizer, saved in `folder`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from rlkit.data.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    config = Qwen2Config(**SHAPES[shape], pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


@dataclass(frozen=True)
class Device:
    """What the figures are divided by."""

    name: str
    peak_flops: float
    """Dense matmul FLOP/s (bf16 tensor cores on GPU; fp32, measured, on CPU)."""
    mem_bandwidth: float
    """Bytes/s of device memory (HBM; on CPU a measured copy rate)."""


def describe_device(device: torch.device) -> Device:
    if device.type == "cuda":
        from rlkit.planner.devices import detect_gpu

        spec = detect_gpu()
        return Device(spec.name, spec.peak_flops, spec.mem_bandwidth)
    from benchmarks.compute_floor import measure_peak_rate

    rate = measure_peak_rate(torch.get_num_threads(), seconds=0.5)
    x = torch.empty(64 * 2**20 // 4)
    start = time.perf_counter()
    x.clone()
    copy_rate = 2 * x.numel() * 4 / (time.perf_counter() - start)  # read + write
    return Device("cpu", float(rate["best"]) * 1e9, copy_rate)  # "best" is GFLOP/s


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameter storages (a tied embedding counts once)."""
    seen, total = set(), 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        if local.data_ptr() not in seen:
            seen.add(local.data_ptr())
            total += local.numel() * local.element_size()
    return total


def decode_roofline_seconds(shape, weights_bytes: int, batch: int, prompt_len: int, new_tokens: int,
                            dtype_bytes: int, bandwidth: float) -> float:
    """Each decode step reads every weight once and the KV cache of every sequence so far."""
    kv_per_position = 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes  # K and V, all layers
    total = 0.0
    for step in range(new_tokens):
        total += weights_bytes + batch * (prompt_len + step) * kv_per_position
    return total / bandwidth


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-0.5b")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--train-batch", type=int, default=8, help="sequences per policy update")
    p.add_argument("--train-tokens", type=int, default=1024, help="tokens per sequence (half prompt, half response)")
    p.add_argument("--gen-batches", default="64,256", help="comma-separated generation batch sizes")
    p.add_argument("--gen-tokens", type=int, default=256, help="new tokens per sequence")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats after one warm-up")
    p.add_argument("--workdir", default=None, help="folder for the model (default: a temporary one)")
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    import rlkit
    from benchmarks.compute_floor import ModelShape, forward_flops
    from rlkit.batch import Batch

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="rlkit-gpu-bench-"))
    folder = build_model_folder(args.shape, workdir / args.shape, dtype)
    # One plain copy of the model on the device: its shape, its bytes, and the source of the copy baseline.
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    shape = ModelShape.of(reference.config)
    weights = param_bytes(reference)
    batches = [int(b) for b in args.gen_batches.split(",")]
    cfg = rlkit.Config.preset(
        "arithmetic-tiny",
        model={"path": str(folder), "dtype": "bfloat16" if dtype == torch.bfloat16 else "float32"},
        data={"eval_size": max(batches)},
        # (the rollout batch only has to be valid: the figures call rollout with explicit prompt batches)
        rollout={"prompts_per_step": args.train_batch, "n": 2, "temperature": 1.0, "max_new_tokens": args.gen_tokens},
        actor={"lr": 1e-6, "mini_batch_size": args.train_batch, "micro_batch_size": args.train_batch},
        critic={"micro_batch_size": args.train_batch},
        # FSDP2 on the one rank, as bf16 on a GPU always is: the CPU smoke run takes the GPU's code path
        cluster={"backend": "local", "device": args.device, "shard_one_rank": True},
        logging={"run_dir": str(workdir / "runs"), "dashboard": False},
    ).override({"algo.kl_coef": 0.0})
    out: dict = {"shape": args.shape, "dtype": str(dtype).removeprefix("torch."), "date": time.strftime("%Y-%m-%d")}
    with rlkit.Session(cfg) as s:
        actor = s.roles["actor"]
        dev = describe_device(device)
        out["device"] = dev.name
        out["param_bytes"] = weights

        # --- the policy update
        half = args.train_tokens // 2
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(7, 103, (args.train_batch, args.train_tokens), generator=gen)
        batch = Batch.from_prompts(ids[:, :half], torch.ones(args.train_batch, half, dtype=torch.long)).replace(
            response_ids=ids[:, half:], response_mask=torch.ones(args.train_batch, args.train_tokens - half,
                                                                 dtype=torch.long),
            advantages=torch.randn(args.train_batch, args.train_tokens - half, generator=gen),
            group_id=torch.arange(args.train_batch))
        batch = s.compute_old_logprobs(batch)
        seconds, _ = timed(lambda: s.update_actor(batch), device, args.repeats)
        flops = 3 * args.train_batch * forward_flops(shape, args.train_tokens - 1, args.train_tokens - half)
        out["train"] = {"batch": args.train_batch, "tokens": args.train_tokens, "seconds": seconds,
                        "tflops": flops / seconds / 1e12, "mfu": flops / seconds / dev.peak_flops}

        # --- generation on the hf engine. On one rank its default leaves FSDP's per-layer copy in place (no
        # sync, one layer's copy per forward); "gathered" mode (what W > 1 ranks use) unshards every module
        # once per generate call: that gather is the sync measured below, and both modes' speeds are shown.
        engine = s._group_of["actor"]._impl.host.roles["actor"].engine  # local backend: the object itself
        out["generate"] = []
        for keep in (False, True):
            engine.keep_unsharded = keep
            for b in (batches if not keep else batches[-1:]):
                prompts = s.prompts.eval_batch(b)
                prompt_len = int(prompts.prompt_ids.shape[1])
                seconds, rolled = timed(lambda: s.rollout(prompts, n=1), device, args.repeats)
                tokens = int(rolled.response_mask.sum())
                roof = decode_roofline_seconds(shape, weights, b, prompt_len, args.gen_tokens,
                                               torch.empty((), dtype=dtype).element_size(), dev.mem_bandwidth)
                measured, ideal = tokens / seconds, b * args.gen_tokens / roof
                out["generate"].append({"batch": b, "mode": "gathered" if keep else "per-layer",
                                        "new_tokens": args.gen_tokens, "tokens": tokens, "seconds": seconds,
                                        "tokens_per_s": measured, "roofline_tokens_per_s": ideal,
                                        "of_roofline": measured / ideal})
        last = actor.last_sync()[0]  # the gathered mode's last sync
        buffer = torch.empty(weights // 2 + 1, dtype=torch.int16, device=device)
        params = list(reference.parameters())

        def copy_once():
            offset = 0
            flat = buffer.view(torch.uint8)
            for q in params:
                n = q.numel() * q.element_size()
                flat[offset:offset + n].copy_(q.detach().reshape(-1).view(torch.uint8))
                offset += n

        copy_s, _ = timed(copy_once, device, args.repeats)
        out["sync"] = {"mode": last["mode"] if last else None, "seconds": last["seconds"] if last else None,
                       "bytes": last["bytes"] if last else None,
                       "peak_extra_bytes": last["peak_extra_bytes"] if last else None,
                       "copy_once_seconds": copy_s,
                       "of_copy_once": (last["seconds"] / copy_s) if last and copy_s > 0 else None}
    print("GPU_JSON " + json.dumps(out))
    print(format_table(out))
    return out


def format_table(out: dict) -> str:
    t = out["train"]
    lines = [f"{out['device']} | {out['shape']} ({out['param_bytes'] / 2**20:.1f} MiB of {out['dtype']} parameters) "
             f"| {out['date']}",
             f"policy update: {t['batch']} x {t['tokens']} tokens in {t['seconds']:.3f} s = {t['tflops']:.1f} TFLOP/s, "
             f"MFU {t['mfu']:.1%}"]
    for g in out["generate"]:
        lines.append(f"generate batch {g['batch']} ({g['mode']}): {g['tokens_per_s']:.0f} tokens/s, roofline "
                     f"{g['roofline_tokens_per_s']:.0f} tokens/s ({g['of_roofline']:.1%})")
    sy = out["sync"]
    if sy["seconds"] is not None:
        lines.append(f"weight sync ({sy['mode']}): {sy['seconds'] * 1e3:.2f} ms, {sy['bytes'] / 2**20:.0f} MiB, "
                     f"peak extra {sy['peak_extra_bytes'] / 2**20:.0f} MiB; one plain copy "
                     f"{sy['copy_once_seconds'] * 1e3:.2f} ms (sync = {sy['of_copy_once']:.2f}x the copy)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
