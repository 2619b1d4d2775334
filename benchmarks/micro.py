"""Micro-timings of the reference model's three kinds of call, outside any framework.

    .venv/bin/python -m benchmarks.micro --size 1m --threads 1,2
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m benchmarks.micro --size 1m --threads 1,2
    .venv/bin/python -m benchmarks.micro --size 1m --threads 2 --keep-freed-memory
    .venv/bin/python -m benchmarks.micro --size 1m --threads 2 --compile

What a step of the reference work is made of, as plain transformers calls on the saved reference
model: a no-grad forward over the batch (the reference log-probs), a forward + backward (the
policy update without the optimizer), and one decode step of 64 rows with a KV cache (generation
is 16 of these). Each figure is the best and the median of `--repeats` calls after one warm-up
call, per thread count, in this one process. It shows how much of a stage is the model itself:
what neither rlkit nor TRL can remove. Options try two ideas (BENCHMARKS.md says why neither was
adopted): `--keep-freed-memory` keeps freed blocks in glibc's heap (`mallopt`) and `--compile`
times `torch.compile`d calls (with the compile time).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import time

import torch

from benchmarks.reference_work import DEFAULT_WORKDIR, ReferenceWork, build_reference


def best_and_median(fn, repeats: int) -> tuple[float, float]:
    """Seconds of `fn()`: (best, median) of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[0], times[len(times) // 2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="1m", choices=["1m", "9m"])
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to time in turn")
    p.add_argument("--batch", type=int, default=64, help="rows (8 prompts x 8 samples)")
    p.add_argument("--length", type=int, default=22, help="tokens per row (prompt ~6 + 16 new)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--keep-freed-memory", action="store_true", help="glibc mallopt: keep freed blocks in the heap")
    p.add_argument("--compile", action="store_true", help="time torch.compile'd forward and forward+backward")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    a = p.parse_args(argv)
    if a.keep_freed_memory:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    from transformers import AutoModelForCausalLM

    model_dir, _ = build_reference(ReferenceWork(size=a.size), a.workdir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (a.batch, a.length), generator=gen)  # (B, L)
    mask = torch.ones_like(ids)
    positions = torch.arange(a.length).expand(a.batch, a.length)
    prompt = a.length - 16  # the decode step continues a prompt of this length

    def forward(m):
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=mask, position_ids=positions).logits

    def forward_backward(m):
        logits = m(input_ids=ids, attention_mask=mask, position_ids=positions).logits  # (B, L, V)
        torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).mean().backward()

    from rlkit.rollout.hf import cache_argument

    cache_arg = cache_argument(model)  # "cache" (transformers >= 5.20) or "past_key_values"
    with torch.no_grad():
        cache = getattr(model(input_ids=ids[:, :prompt], attention_mask=mask[:, :prompt],
                              position_ids=positions[:, :prompt], use_cache=True), cache_arg)

    def decode_step():
        # one new token per row on a prompt-long cache; the cache is cropped back so every call is the same
        with torch.no_grad():
            model(input_ids=ids[:, prompt:prompt + 1], attention_mask=mask[:, :prompt + 1],
                  position_ids=positions[:, prompt:prompt + 1], use_cache=True, **{cache_arg: cache})
        cache.crop(-1)  # drop the token just added

    out = {"size": a.size, "batch": a.batch, "length": a.length, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
           "keep_freed_memory": a.keep_freed_memory, "threads": {}}
    print(f"# {a.size} model, batch {a.batch} x {a.length} tokens, OMP_WAIT_POLICY="
          f"{out['omp_wait_policy'] or '(unset)'}, keep_freed_memory={a.keep_freed_memory}; best / median of "
          f"{a.repeats} calls, seconds")
    compiled = None
    if a.compile:
        start = time.perf_counter()
        compiled = torch.compile(model)
        forward(compiled)
        forward_backward(compiled)
        out["compile_s"] = time.perf_counter() - start
        print(f"torch.compile: {out['compile_s']:.1f} s to compile the forward and the forward + backward")
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        row = {"forward": best_and_median(lambda: forward(model), a.repeats),
               "forward_backward": best_and_median(lambda: forward_backward(model), a.repeats),
               "decode_step": best_and_median(decode_step, a.repeats)}
        if compiled is not None:
            row["compiled_forward"] = best_and_median(lambda: forward(compiled), a.repeats)
            row["compiled_forward_backward"] = best_and_median(lambda: forward_backward(compiled), a.repeats)
        out["threads"][threads] = row
        print(f"{threads} thread(s): " + ", ".join(f"{k} {b:.4f} / {m:.4f}" for k, (b, m) in row.items()))
    print("MICRO_JSON " + json.dumps(out))
    return out


if __name__ == "__main__":
    main()
