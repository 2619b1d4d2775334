"""Padding removal, token-budget micro-batches and LoRA on the real model: time and peak memory of one update.

    make real-model                                       # once per machine (SmolLM2-135M-Instruct)
    .venv/bin/python -m benchmarks.packing_lora           # 5 arms x 2 rounds, ~10 minutes on 2 cores
    .venv/bin/python -m benchmarks.packing_lora --rounds 1 --arms rows,packed

One policy update (forward + backward of every micro-batch, then the AdamW step) over 8 chat prompts x 4
samples of SmolLM2-135M-Instruct ("What is a + b?" through the chat template) with responses of
varied length: `--min-len` to `--max-len` new tokens, log-uniform under a fixed seed (most short, a few
long, as sampled answers are), random token ids (time and memory do not depend on them). Arms:

- rows:        `micro_batch_size` rows per micro-batch, padded (today's default);
- budget:      `max_tokens_per_micro_batch` = `--budget`, rows longest first, padded;
- packed:      the same budget, each micro-batch one packed row (`pack_sequences`);
- lora:        rows as in `rows`, LoRA rank `--lora-rank` on every linear layer (frozen base, tiny AdamW state);
- lora-packed: LoRA with the budget and packing.

Each arm runs in a fresh process (its peak never shows in another's); arms alternate within each round and
the medians over rounds are reported. Peak memory is the resident-set high-water mark during the measured
update minus the RSS before it (the loaded model), as in `benchmarks.real_model_memory`; the first update
of each process is a warm-up (it also allocates AdamW's moments: the measured one holds them already).
`padding` is the share of computed token positions that are padding (0 when packed). `resident before` is
the process's RSS when the measured update starts (the model and AdamW's moments: what LoRA shrinks most),
`peak total` that plus the peak added.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

MARKER = "PACKING_JSON "
ARMS = {
    "rows": {},
    "budget": {"budget": True},
    "packed": {"budget": True, "pack": True},
    "lora": {"lora": True},
    "lora-packed": {"lora": True, "budget": True, "pack": True},
}


def response_lengths(count: int, low: int, high: int, seed: int = 0) -> list[int]:
    """`count` lengths in [low, high], log-uniform (most answers short, a few long), fixed by `seed`."""
    rng = random.Random(seed)
    return [int(round(math.exp(rng.uniform(math.log(low), math.log(high))))) for _ in range(count)]


def varied_batch(prompts, lengths: list[int], vocab: int, samples: int):
    """`samples` rows per prompt, row i with a response of `lengths[i]` random tokens (right-padded)."""
    import torch

    rows = prompts.select([i // samples for i in range(len(prompts) * samples)])
    width = max(lengths)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (len(rows), width), generator=g)
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    return rows.replace(response_ids=ids * mask, response_mask=mask,
                        advantages=torch.randn(len(rows), width, generator=g) * mask)


def run_arm(case: dict) -> dict:
    import psutil
    import torch
    import torch.distributed as dist

    from benchmarks.real_model_memory import _peak_window, _prompts
    from rlkit.algos.core import aggregate
    from rlkit.workers.common import load_tokenizer
    from rlkit.workers.lora import LoraSpec
    from rlkit.workers.batching import sequence_inputs
    from rlkit.workers.packing import row_token_counts
    from rlkit.workers.policy import response_logprobs
    from rlkit.workers.sharded import ShardedModel
    from rlkit.workers.optim import OptimConfig, Optimizer
    from rlkit.workers.train_step import split_micro_batches

    torch.set_num_threads(case["threads"])
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    arm = ARMS[case["arm"]]
    lora = LoraSpec(rank=case["lora_rank"], alpha=2.0 * case["lora_rank"]) if arm.get("lora") else None
    tokenizer = load_tokenizer(case["model"], None)
    model = ShardedModel(case["model"], trainable=True, lora=lora)
    optimizer = Optimizer(model.module, OptimConfig(lr=1e-6))
    prompts = _prompts(tokenizer, case["prompts"])
    lengths = response_lengths(case["prompts"] * case["samples"], case["min_len"], case["max_len"])
    batch = varied_batch(prompts, lengths, model.config.vocab_size, case["samples"])
    budget = case["budget"] if arm.get("budget") else 0
    pack = bool(arm.get("pack"))
    plan = split_micro_batches(batch, case["micro"], max_tokens=budget, packed=pack)
    tokens = float(batch.response_mask.sum())
    real = row_token_counts(batch).tolist()
    if pack:  # packed: every real token once
        computed = sum(real)
    else:  # padded: the trimmed rectangle of each micro-batch
        computed = sum(int(sequence_inputs(mb)[0].numel()) for _, mb in plan)

    def update() -> None:
        for _, mb in plan:
            out = response_logprobs(model, mb, pack=pack)
            loss = aggregate(-out["logprobs"] * mb.advantages, mb.response_mask, "token-mean", global_tokens=tokens)
            loss.backward()
        optimizer.step()

    reset, read = _peak_window()
    update()  # warm-up (and AdamW's moments)
    reset()
    resident = psutil.Process().memory_info().rss  # the model, its gradients' absence, AdamW's moments
    start = time.perf_counter()
    update()
    seconds = time.perf_counter() - start
    trainable = sum(p.numel() for p in model.module.parameters() if p.requires_grad)
    added = read()
    return {**case, "seconds": seconds, "peak_mb": added / 1e6, "resident_mb": resident / 1e6,
            "total_peak_mb": (resident + added) / 1e6, "micro_batches": len(plan),
            "padding": 1 - sum(real) / computed, "real_tokens": sum(real), "trainable_params": trainable,
            "response_tokens": int(tokens)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--min-len", type=int, default=8)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--micro", type=int, default=8, help="rows per micro-batch of the row arms")
    p.add_argument("--budget", type=int, default=1024, help="tokens per micro-batch of the budget arms")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None, help="model folder (default: the prepared SmolLM2-135M-Instruct)")
    p.add_argument("--json", default=None)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one arm, in this process
    args = p.parse_args(argv)
    if args.case:
        print(MARKER + json.dumps(run_arm(json.loads(args.case))), flush=True)
        return
    if args.model is None:
        from rlkit.data.gguf import prepare_smollm2

        args.model = str(prepare_smollm2())
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {list(ARMS)}")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "TOKENIZERS_PARALLELISM": "false"}
    records = []
    for rnd in range(args.rounds):
        for arm in arms:
            case = {"arm": arm, "model": args.model, "prompts": args.prompts, "samples": args.samples,
                    "min_len": args.min_len, "max_len": args.max_len, "micro": args.micro, "budget": args.budget,
                    "lora_rank": args.lora_rank, "threads": args.threads, "round": rnd}
            out = subprocess.run([sys.executable, "-m", "benchmarks.packing_lora", "--case", json.dumps(case)],
                                 capture_output=True, text=True, env=env, timeout=1800)
            line = [l for l in out.stdout.splitlines() if l.startswith(MARKER)]
            if out.returncode or not line:
                raise SystemExit(f"arm {arm} failed:\n{out.stderr[-3000:]}")
            records.append(json.loads(line[-1][len(MARKER):]))
            r = records[-1]
            print(f"round {rnd} {arm:12s} {r['seconds']:7.2f} s  peak {r['peak_mb']:7.0f} MB  "
                  f"padding {r['padding']:.0%}  micro-batches {r['micro_batches']}", flush=True)
    print("\n| arm | update (s), median | vs first arm | peak RSS added (MB) | resident before (MB) | peak total (MB) "
          "| padding | micro-batches | trainable params |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = statistics.median(r["seconds"] for r in records if r["arm"] == arms[0])
    for arm in arms:
        rs = [r for r in records if r["arm"] == arm]
        sec = statistics.median(r["seconds"] for r in rs)
        med = {key: statistics.median(r[key] for r in rs) for key in ("peak_mb", "resident_mb", "total_peak_mb")}
        print(f"| {arm} | {sec:.2f} | {sec / base:.2f} | {med['peak_mb']:.0f} | {med['resident_mb']:.0f} | "
              f"{med['total_peak_mb']:.0f} | {rs[0]['padding']:.0%} | {rs[0]['micro_batches']} | "
              f"{rs[0]['trainable_params']:,} |")
    first = records[0]
    print(f"\n{first['prompts']} prompts x {first['samples']} samples, responses {first['min_len']}-{first['max_len']} "
          f"tokens ({first['response_tokens']} response tokens, {first['real_tokens']} with the prompts)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
