"""Peak memory per role on the real model, chunked vs unchunked log-probs, and bf16 vs fp32 on this CPU.

    make real-model                                        # once per machine (SmolLM2-135M-Instruct)
    .venv/bin/python -m benchmarks.real_model_memory       # 14 cases, 10-18 minutes on 2 shared cores
    .venv/bin/python -m benchmarks.real_model_memory --dtypes float32 --speed-rounds 0   # fp32 only, ~3 minutes
    .venv/bin/python -m benchmarks.real_model_memory --rows 16 --response-len 64 --chunks 0,128,256,512

Every measurement runs in a fresh subprocess (so one's peak never shows up in another's), on
SmolLM2-135M-Instruct (vocabulary 49,152, 30 layers) with `--rows` chat prompts ("What is a + b?"
through the chat template) and `--response-len` response tokens, one torch process of `--threads`
threads, the role's own code path (`ShardedModel` + `rlkit.workers.policy.response_logprobs`):

- policy: one micro-batch's forward + backward (a PPO-style loss on the log-probs and the entropy);
- reference: one micro-batch's log-probs without grad (the old-log-prob forward is the same call);
- critic: one micro-batch's values forward + backward (no vocabulary: the chunk knob does not apply);
- rollout: the `hf` engine (`HFEngine.generate`, every row exactly `--response-len` new tokens) and
  the gap between its log-probs and the trainer's recomputation of the same tokens, chunked and not;
- speed: fp32 and bf16 models in one process, a policy forward + backward and a generation of each,
  interleaved over `--speed-rounds` rounds (load on a shared machine drifts between processes).

Memory is the kernel's resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs right
before the measured call, after `malloc_trim`) minus the RSS at that moment: what the call added on top
of the loaded model (gradients are cleared before each call). The cases run with a fixed
`MALLOC_MMAP_THRESHOLD_` (1 MiB, `--mmap-threshold`), so freed blocks go back to the kernel and the RSS
follows the live tensors (with glibc's adaptive threshold the same case moved by +-400 MB between runs).
One warm-up call precedes the `--reps` measured ones; times are the median, peaks the max.
`model.dtype = "bfloat16"` is `mixed_precision=True`: FSDP2's bf16 compute over fp32 master weights (on one
rank too); the chunked head always computes the logits in float32.

Prints markdown tables; `--json FILE` keeps every record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARKER = "MEMORY_JSON "


# ----------------------------------------------------------------------------- one case (in its own process)


def _peak_window():
    """(reset, read): reset the RSS high-water mark; read the peak above the RSS at reset, in bytes.

    `reset` first hands freed heap memory back to the kernel (glibc `malloc_trim`): blocks under
    malloc's mmap threshold (32 MB at most) stay in the heap after `free`, and a later call reusing
    them would not show as new RSS, so each measured call would read low by what the warm-up left.
    """
    import ctypes

    import psutil
    import torch

    from rlkit.rollout.hf import peak_memory_since_reset, reset_peak_memory

    device = torch.device("cpu")
    state = {}

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except OSError:  # not glibc: measure without trimming
        trim = None

    def reset() -> None:
        if trim is not None:
            trim(0)
        state["base"] = psutil.Process().memory_info().rss
        state["ok"] = reset_peak_memory(device, host=True)
        if not state["ok"]:
            raise RuntimeError("this kernel does not let a process reset its RSS high-water mark "
                               "(/proc/self/clear_refs): cannot measure a call's peak")

    def read() -> int:
        return max(0, peak_memory_since_reset(device, state["ok"]) - state["base"])

    return reset, read


def _prompts(tokenizer, rows: int):
    from rlkit.batch import Batch
    from rlkit.data.datasets import encode_prompts

    texts = [f"What is {3 + 7 * i} + {11 + 5 * i}? Reply with just the number." for i in range(rows)]
    ids, mask = encode_prompts(tokenizer, texts, max_len=256, chat_template=True)
    return Batch(prompt_ids=ids, prompt_mask=mask, batch_size=[rows])


def _with_responses(prompts, response_len: int, vocab: int, seed: int = 0):
    """The prompts with full-length responses of random tokens (memory and time do not depend on them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (len(prompts), response_len), generator=g)
    return prompts.replace(response_ids=ids, response_mask=torch.ones_like(ids))


def run_case(case: dict) -> dict:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(case["threads"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    from rlkit.workers.common import load_tokenizer
    from rlkit.workers.policy import response_logprobs
    from rlkit.workers.sharded import ShardedModel

    role, chunk, bf16 = case["role"], case["chunk"], case["dtype"] == "bfloat16"
    tokenizer = load_tokenizer(case["model"], None)
    model = ShardedModel(case["model"], kind="token_scores" if role == "critic" else "causal_lm",
                         trainable=role in ("policy", "critic", "speed"), mixed_precision=bf16)
    prompts = _prompts(tokenizer, case["rows"])
    reset, read = _peak_window()
    record = {**case, "tokens": case["rows"] * case["response_len"],
              "prompt_len": int(prompts.prompt_ids.shape[1])}

    if role == "rollout":
        return {**record, **_rollout(model, tokenizer, prompts, case, reset, read)}
    if role == "speed":
        return {**record, **_speed(model, tokenizer, prompts, case)}

    mb = _with_responses(prompts, case["response_len"], model.config.vocab_size)

    def call() -> None:
        if role == "policy":
            out = response_logprobs(model, mb, chunk_size=chunk)
            loss = -(out["logprobs"] * torch.linspace(-1, 1, out["logprobs"].shape[1])).mean()
            (loss - 0.01 * out["entropy"].mean()).backward()
        elif role == "reference":
            with torch.no_grad():
                response_logprobs(model, mb, chunk_size=chunk, with_entropy=False)
        else:  # critic: values of the response positions, squared error to 0
            ids = torch.cat([mb.prompt_ids, mb.response_ids], 1)
            mask = torch.cat([mb.prompt_mask, mb.response_mask], 1)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            values = model.forward(ids, mask, positions)[:, -case["response_len"]:]
            values.pow(2).mean().backward()
        for p in model.module.parameters():
            p.grad = None

    call()  # warm-up: allocator and kernels, excluded
    seconds, peaks = [], []
    for _ in range(case["reps"]):
        reset()
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
        peaks.append(read())
    return {**record, "seconds": statistics.median(seconds), "peak_mb": max(peaks) / 1e6}


def _rollout(model, tokenizer, prompts, case, reset, read) -> dict:
    """Generation time and peak, then the rollout-vs-trainer log-prob gap of the generated tokens."""
    import torch

    from rlkit.rollout.hf import HFEngine
    from rlkit.rollout.sampling import SamplingParams
    from rlkit.workers.policy import response_logprobs

    engine = HFEngine(model, tokenizer, seed=0, keep_unsharded=case.get("keep_unsharded"))
    n = case["response_len"]
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=n, min_new_tokens=n, seed=1)
    engine.generate(prompts.select(torch.arange(2)), SamplingParams(n=1, max_new_tokens=4, seed=0))  # warm-up
    reset()
    start = time.perf_counter()
    batch = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    peak = read()
    valid = batch.response_mask.bool()
    gaps = {}
    with torch.no_grad():
        for chunk in (case["chunk"], 0):
            lp = response_logprobs(model, batch, chunk_size=chunk, with_entropy=False)["logprobs"]
            diff = (lp - batch.rollout_logprobs)[valid].abs()
            gaps[f"gap_max_chunk{chunk}"] = float(diff.max())
            gaps[f"gap_mean_chunk{chunk}"] = float(diff.mean())
    return {"seconds": seconds, "peak_mb": peak / 1e6, "new_tokens": int(valid.sum()),
            "tokens_per_s": int(valid.sum()) / seconds, **gaps}


def _speed(model, tokenizer, prompts, case) -> dict:
    """fp32 against bf16 in ONE process, interleaved A B A B (a shared machine's load drifts between processes):
    a policy micro-batch's forward + backward (default chunk) and the hf engine's generation (tokens/s)."""
    import torch

    from rlkit.rollout.hf import HFEngine
    from rlkit.rollout.sampling import SamplingParams
    from rlkit.workers.policy import response_logprobs
    from rlkit.workers.sharded import ShardedModel

    models = {"float32": model, "bfloat16": ShardedModel(case["model"], trainable=True, mixed_precision=True)}
    engines = {name: HFEngine(m, tokenizer, seed=0, keep_unsharded=name == "bfloat16") for name, m in models.items()}
    mb = _with_responses(prompts, case["response_len"], model.config.vocab_size)
    n = case["response_len"]
    params = SamplingParams(n=1, temperature=1.0, max_new_tokens=n, min_new_tokens=n, seed=1)

    def train(m) -> float:
        start = time.perf_counter()
        out = response_logprobs(m, mb, chunk_size=case["chunk"])
        (out["logprobs"].mean() + 0.01 * out["entropy"].mean()).backward()
        for p in m.module.parameters():
            p.grad = None
        return time.perf_counter() - start

    def generate(name) -> float:
        start = time.perf_counter()
        batch = engines[name].generate(prompts, params)
        return int(batch.response_mask.sum()) / (time.perf_counter() - start)

    for name in models:  # warm-up
        train(models[name])
        engines[name].generate(prompts.select(torch.arange(2)), SamplingParams(n=1, max_new_tokens=4, seed=0))
    train_s = {name: [] for name in models}
    tokens_per_s = {name: [] for name in models}
    for rnd in range(case["reps"]):
        order = list(models) if rnd % 2 == 0 else list(reversed(models))
        for name in order:
            train_s[name].append(train(models[name]))
            tokens_per_s[name].append(generate(name))
    return {"seconds": statistics.median(train_s["float32"]),
            **{f"train_s_{k}": statistics.median(v) for k, v in train_s.items()},
            **{f"tokens_per_s_{k}": statistics.median(v) for k, v in tokens_per_s.items()},
            "peak_mb": float("nan")}


# ----------------------------------------------------------------------------- the driver


def cases(args) -> list[dict]:
    base = {"model": args.model, "rows": args.rows, "response_len": args.response_len, "threads": args.threads,
            "reps": args.reps, "omp_wait_policy": args.omp_wait_policy, "mmap_threshold": args.mmap_threshold}
    chunks = [int(c) for c in args.chunks.split(",")]
    dtypes = args.dtypes.split(",")
    out = []
    for dtype in dtypes:
        for role in ("policy", "reference"):
            for chunk in chunks:
                out.append({**base, "role": role, "chunk": chunk, "dtype": dtype})
        out.append({**base, "role": "critic", "chunk": 0, "dtype": dtype})
        out.append({**base, "role": "rollout", "chunk": max(chunks), "dtype": dtype, "reps": 1})
        if dtype == "bfloat16":  # one rank: FSDP's per-layer cast at every token, or one bf16 copy for the call
            out.append({**base, "role": "rollout", "chunk": max(chunks), "dtype": dtype, "reps": 1,
                        "keep_unsharded": True})
    if len(dtypes) > 1 and args.speed_rounds > 0:
        out.append({**base, "role": "speed", "chunk": max(chunks), "dtype": "float32", "reps": args.speed_rounds})
    return out


def run_in_subprocess(case: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(case["threads"]), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if case.get("omp_wait_policy"):
        env["OMP_WAIT_POLICY"] = case["omp_wait_policy"]
    if case.get("mmap_threshold"):
        # a fixed threshold (no glibc adaptation): every block above it is mmap'ed and unmapped on free, so the
        # RSS follows the live tensors; without it a peak moved by +-400 MB between runs of the same case
        env["MALLOC_MMAP_THRESHOLD_"] = str(case["mmap_threshold"])
    proc = subprocess.run([sys.executable, "-m", "benchmarks.real_model_memory", "--case", json.dumps(case)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {case['role']}/{case['dtype']}/chunk {case['chunk']} failed "
                           f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARKER):])


def _label(r: dict) -> str:
    if r["role"] in ("critic", "rollout"):
        return "n/a" if r["role"] == "critic" else str(r["chunk"])
    return "off (whole logits)" if r["chunk"] == 0 else str(r["chunk"])


def memory_table(records: list[dict]) -> str:
    lines = ["| role | dtype | logits chunk | peak RSS added (MB) | time (s) |", "|---|---|---|---:|---:|"]
    for r in records:
        if r["role"] in ("rollout", "speed"):
            continue
        lines.append(f"| {r['role']} | {r['dtype']} | {_label(r)} | {r['peak_mb']:.0f} | {r['seconds']:.2f} |")
    return "\n".join(lines)


def rollout_table(records: list[dict]) -> str:
    lines = ["| rollout dtype | gather | new tokens/s | peak RSS added (MB) | rollout-trainer gap, chunked: max / mean "
             "| unchunked: max / mean |", "|---|---|---:|---:|---:|---:|"]
    for r in records:
        if r["role"] != "rollout":
            continue
        c = r["chunk"]
        gather = "whole model" if r.get("keep_unsharded") else ("per layer" if r["dtype"] == "bfloat16" else "none")
        lines.append(f"| {r['dtype']} | {gather} | {r['tokens_per_s']:.1f} | {r['peak_mb']:.0f} | "
                     f"{r[f'gap_max_chunk{c}']:.2e} / {r[f'gap_mean_chunk{c}']:.2e} | "
                     f"{r['gap_max_chunk0']:.2e} / {r['gap_mean_chunk0']:.2e} |")
    return "\n".join(lines)


def speed_table(records: list[dict]) -> str:
    lines = ["| interleaved in one process (median of rounds) | float32 | bfloat16 | bf16 / fp32 |", "|---|---:|---:|---:|"]
    for r in records:
        if r["role"] != "speed":
            continue
        t32, t16 = r["train_s_float32"], r["train_s_bfloat16"]
        g32, g16 = r["tokens_per_s_float32"], r["tokens_per_s_bfloat16"]
        lines.append(f"| policy forward + backward, chunk {r['chunk']} (s) | {t32:.2f} | {t16:.2f} | {t16 / t32:.2f} |")
        lines.append(f"| hf engine generation (new tokens/s) | {g32:.1f} | {g16:.1f} | {g16 / g32:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: `rlkit.data.gguf.prepare_smollm2()`)")
    p.add_argument("--rows", type=int, default=8, help="sequences in the micro-batch / prompts generated")
    p.add_argument("--response-len", type=int, default=48, help="response tokens per sequence")
    p.add_argument("--chunks", default="0,256",
                   help="actor.logits_chunk_size values of the policy and reference rows (0 = unchunked); the "
                        "rollout gap and the speed rows use the largest")
    p.add_argument("--dtypes", default="float32,bfloat16", help="model.dtype values to measure")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--omp-wait-policy", default=None,
                   help="OMP_WAIT_POLICY of the cases (PASSIVE on a shared machine: spinning OpenMP threads "
                        "make 2-thread runs several times slower when another process holds a core)")
    p.add_argument("--reps", type=int, default=1, help="measured calls per case (after one warm-up)")
    p.add_argument("--speed-rounds", type=int, default=3,
                   help="rounds of the interleaved fp32 / bf16 speed case (0: skip it)")
    p.add_argument("--mmap-threshold", type=int, default=1 << 20,
                   help="MALLOC_MMAP_THRESHOLD_ of the cases in bytes (0: glibc's adaptive default)")
    p.add_argument("--json", default=None, help="write every record to this file")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print its record
    args = p.parse_args(argv)

    if args.case:
        sys.stdout.write(MARKER + json.dumps(run_case(json.loads(args.case))) + "\n")
        return
    if args.model is None:
        from rlkit.data.gguf import prepare_smollm2

        args.model = str(prepare_smollm2())
    records = []
    for case in cases(args):
        start = time.perf_counter()
        records.append(run_in_subprocess(case))
        r = records[-1]
        print(f"  {r['role']:<9} {r['dtype']:<8} chunk {r['chunk']:<4} peak {r['peak_mb']:7.0f} MB  "
              f"{r['seconds']:6.2f} s   ({time.perf_counter() - start:.0f} s with start-up)", flush=True)
    prompt_len = records[0]["prompt_len"]
    print(f"\nSmolLM2-135M-Instruct, {args.rows} sequences x ({prompt_len} prompt + {args.response_len} response) "
          f"tokens, {args.threads} threads (OMP_WAIT_POLICY {args.omp_wait_policy or 'default'})\n")
    print(memory_table(records))
    print()
    print(rollout_table(records))
    print()
    print(speed_table(records))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
