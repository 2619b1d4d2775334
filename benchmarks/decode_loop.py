"""Milliseconds per decode step of the hf engine's sampling loop against plain transformers `generate` (issue 16).

    .venv/bin/python -m benchmarks.decode_loop                                   # 1M model + SmolLM2-135M, ~2 min
    .venv/bin/python -m benchmarks.decode_loop --models 1m --variants generate,dynamic,static,static-compile
    .venv/bin/python -m benchmarks.decode_loop --models 1m --profile dynamic     # where a step's time goes

Every variant samples `--batch` rows (the reference work's "a+b=" prompts, 8 samples per prompt) for
`--new-tokens` tokens at temperature 1 from the same model in this one process. Variants run in
rounds (one call of each per round, in a rotated order, after one warm-up call each) and the table
gives the median of the rounds: ms per decode step (the wall time of the call / new tokens: one
step makes one token for every row still going), and the ratio to `generate`. Two workloads:
- `fixed`: `min_new_tokens = max_new_tokens`, so every row makes exactly `--new-tokens` tokens on
  every side (the same work);
- `eos`: rows end at EOS (on the random 1M model also at 8 more stop ids, so that rows end at
  different lengths: the case where the dynamic cache drops finished rows and the static one cannot).
  The sides' different draws end at different lengths, so the table gives the mean length per side.

Variants: `generate` (transformers' own loop, `DynamicCache`, `do_sample=True`, no top-k / top-p;
it computes no log-probs), `generate-static` (the same with `cache_implementation="static"`),
`previous` (rlkit's loop before issue 16: a `torch.cat` of the mask, two host syncs per token and
`torch.multinomial`),
`dynamic` / `static` (`rlkit.rollout.decode.sample_responses` with each KV cache) and
`static-compile` (static with `compile_decode=True`; the first call's compile time is reported
separately). `matmul` is the floor of one decode step: every linear layer of the model (and the LM
head) on a (batch, in_features) input, nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks.reference_work import DEFAULT_WORKDIR, ReferenceWork, build_reference, make_prompts

VARIANTS = ("generate", "generate-static", "previous", "dynamic", "static", "static-compile")
DEFAULT_VARIANTS = "generate,generate-static,previous,dynamic,static"


# ----------------------------------------------------------------------------- the loop before issue 16


@torch.no_grad()
def previous_loop(model, prompt_ids, prompt_mask, params, *, eos_ids: Sequence[int], pad_id: int,
                  generator: torch.Generator | None = None, multinomial: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """rlkit's sampling loop as it was before issue 16 (no stop strings), for the "before" column:
    a `DynamicCache`, the attention mask grown with `torch.cat` per token, `bool(any)` and `bool(all)`
    host syncs per token, and (multinomial=True) tokens drawn by `torch.multinomial` instead of
    `rlkit.rollout.sampling.draw_tokens`. Returns (ids (b, T_max), logprobs (b, T_max)), unmasked."""
    from unittest import mock

    from rlkit.rollout import sampling

    if multinomial:
        with mock.patch.object(sampling, "draw_tokens",
                               lambda probs, gen: torch.multinomial(probs, 1, generator=gen).squeeze(-1)):
            return previous_loop(model, prompt_ids, prompt_mask, params, eos_ids=eos_ids, pad_id=pad_id,
                                 generator=generator, multinomial=False)
    from rlkit.rollout.decode import cache_argument, trim_left_padding
    from rlkit.rollout.sampling import next_tokens

    device = prompt_ids.device
    prompt_ids, mask = trim_left_padding(prompt_ids, prompt_mask.long())
    b, budget = prompt_ids.shape[0], params.max_new_tokens
    stop_ids = torch.tensor(sorted(set(eos_ids) | set(params.stop_token_ids)), dtype=torch.long, device=device)
    out_ids = torch.full((b, budget), pad_id, dtype=torch.long, device=device)
    out_logprobs = torch.zeros((b, budget), dtype=torch.float32, device=device)
    active = torch.arange(b, device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_arg = cache_argument(model)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache, logits, next_position = getattr(out, cache_arg), out.logits[:, -1], mask.sum(-1)
    for t in range(budget):
        banned = stop_ids if t < params.min_new_tokens else None
        tokens, logprobs = next_tokens(logits, params, generator, banned=banned)
        out_ids[active, t], out_logprobs[active, t] = tokens, logprobs
        ended = torch.isin(tokens, stop_ids)
        if t == budget - 1 or bool(ended.all()):
            break
        if bool(ended.any()):
            keep = (~ended).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            active, tokens, mask, next_position = active[keep], tokens[keep], mask[keep], next_position[keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=next_position[:, None],
                    use_cache=True, **{cache_arg: cache})
        logits, next_position = out.logits[:, -1], next_position + 1
    return out_ids, out_logprobs


# ----------------------------------------------------------------------------- one model's cases


def load(model_name: str, workdir: str) -> tuple[Any, Any, str]:
    """("1m" | "real" | a folder) -> (model in eval mode, tokenizer, label)."""
    from rlkit.data import load_model_and_tokenizer

    if model_name == "1m":
        folder, label = build_reference(ReferenceWork(size="1m"), workdir)[0], "1M reference (qwen2-1m)"
    elif model_name == "real":
        from rlkit.data.gguf import prepare_smollm2

        folder, label = prepare_smollm2(), "SmolLM2-135M-Instruct"
    else:
        folder, label = Path(model_name), Path(model_name).name
    model, tok = load_model_and_tokenizer(folder)
    return model.eval(), tok, label


def matmul_step_seconds(model, batch: int, repeats: int) -> float:
    """Median seconds of every `nn.Linear` of `model` applied once to a (batch, in_features) input:
    the matmul work of one decode step (the LM head included; attention's two small bmm's are not)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch, m.in_features) for m in linears]

    def step():
        for m, x in zip(linears, inputs):
            torch.nn.functional.linear(x, m.weight, m.bias)

    with torch.no_grad():
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_calls(model, tok, ids, mask, params, variants: Sequence[str], eos: list[int], seed: int
               ) -> dict[str, Callable[[], int]]:
    """variant -> a function that samples once and returns the new tokens it made (EOS included)."""
    from rlkit.rollout.decode import sample_responses

    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]

    def generate(cache_implementation=None):
        def call():
            extra = {"cache_implementation": cache_implementation} if cache_implementation else {}
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=params.max_new_tokens, min_new_tokens=params.min_new_tokens,
                                     eos_token_id=eos, pad_token_id=pad, **extra)
            new = out[:, ids.shape[1]:]
            is_stop = torch.isin(new, torch.tensor(eos))
            return int(((is_stop.long().cumsum(-1) - is_stop.long()) == 0).sum())
        return call

    def ours(**kwargs):
        def call():
            r = sample_responses(model, ids, mask, params, eos_ids=eos, pad_id=pad,
                                 generator=torch.Generator().manual_seed(seed), **kwargs)
            return int(r.mask.sum())
        return call

    def previous():
        from rlkit.rollout.sampling import mask_through_first_stop

        out_ids, _ = previous_loop(model, ids, mask, params, eos_ids=eos, pad_id=pad,
                                   generator=torch.Generator().manual_seed(seed))
        return int(mask_through_first_stop(out_ids, eos).sum())

    table = {"generate": generate(), "generate-static": generate("static"), "previous": previous,
             "dynamic": ours(kv_cache="dynamic"), "static": ours(kv_cache="static"),
             "static-compile": ours(kv_cache="static", compile_decode=True)}
    return {v: table[v] for v in variants}


def run_model(model_name: str, args) -> list[dict]:
    from rlkit.data import encode_prompts
    from rlkit.rollout.sampling import SamplingParams

    model, tok, label = load(model_name, args.workdir)
    texts = [r["prompt"] for r in make_prompts(args.batch // 8 or 1, seed=0) for _ in range(8)][: args.batch]
    ids, mask = encode_prompts(tok, texts, 32)
    eos_ids = [int(tok.eos_token_id)]
    matmul_ms = matmul_step_seconds(model, len(texts), 20) * 1e3
    rows = []
    for workload in args.workloads.split(","):
        eos = list(eos_ids)
        if workload == "eos" and model.config.vocab_size < 1000:
            eos += list(range(3, 11))  # a random 103-token model rarely says EOS: 8 more stop ids end rows early
        params = SamplingParams(temperature=1.0, max_new_tokens=args.new_tokens,
                                min_new_tokens=args.new_tokens if workload == "fixed" else 0)
        calls = make_calls(model, tok, ids, mask, params, args.variants.split(","), eos, args.seed)
        first_s = {}
        for name, call in calls.items():  # warm-up (and the compile, for static-compile)
            start = time.perf_counter()
            call()
            first_s[name] = time.perf_counter() - start
        times: dict[str, list[float]] = {n: [] for n in calls}
        tokens: dict[str, list[int]] = {n: [] for n in calls}
        names = list(calls)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                start = time.perf_counter()
                tokens[name].append(calls[name]())
                times[name].append(time.perf_counter() - start)
        base = statistics.median(times["generate"]) if "generate" in times else None
        for name in names:
            median = statistics.median(times[name])
            rows.append({"model": label, "workload": workload, "variant": name, "batch": len(texts),
                         "prompt_len": ids.shape[1], "new_tokens": args.new_tokens,
                         "call_ms": median * 1e3, "ms_per_step": median * 1e3 / args.new_tokens,
                         "mean_len": statistics.mean(tokens[name]) / len(texts),
                         "vs_generate": median / base if base else None, "first_call_s": first_s[name],
                         "matmul_ms_per_step": matmul_ms, "rounds": args.rounds,
                         "spread_ms": [min(times[name]) * 1e3, max(times[name]) * 1e3]})
            print(f"{label:28s} {workload:5s} {name:16s} {rows[-1]['ms_per_step']:7.3f} ms/step "
                  f"(x{rows[-1]['vs_generate'] or 0:.2f} generate; mean len {rows[-1]['mean_len']:.1f}; "
                  f"matmul floor {matmul_ms:.3f} ms)", flush=True)
    if args.profile:
        profile(model, calls[args.profile], label, args)
    return rows


def profile(model, call: Callable[[], int], label: str, args) -> None:
    """Print (and write next to `--out`) torch.profiler's top operators of 5 calls."""
    from torch.profiler import profile as torch_profile

    with torch_profile(record_shapes=False) as prof:
        for _ in range(5):
            call()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    print(f"# profile of {args.profile} on {label}\n{table}")
    if args.out:
        Path(args.out).with_suffix(".profile.txt").write_text(f"# {args.profile} on {label}\n{table}\n")


def markdown(rows: list[dict]) -> str:
    head = ("| model | workload | variant | ms / step | x generate | mean len | matmul floor ms / step | "
            "first call s |\n|---|---|---|---|---|---|---|---|\n")
    return head + "".join(
        f"| {r['model']} | {r['workload']} | {r['variant']} | {r['ms_per_step']:.3f} | "
        f"{'' if r['vs_generate'] is None else format(r['vs_generate'], '.2f')} | {r['mean_len']:.1f} | "
        f"{r['matmul_ms_per_step']:.3f} | {r['first_call_s']:.1f} |\n" for r in rows)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="1m,real", help='comma-separated: "1m", "real" (SmolLM2-135M) or a folder')
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated among {', '.join(VARIANTS)}")
    p.add_argument("--workloads", default="fixed,eos", help='"fixed" (min_new_tokens = max) and/or "eos"')
    p.add_argument("--batch", type=int, default=64, help="rows (8 samples per prompt)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", default=None, choices=VARIANTS, help="also profile this variant (last workload)")
    p.add_argument("--out", default=None, help="write the rows as JSON here (and the profile next to it)")
    p.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    a = p.parse_args(argv)
    unknown = set(a.variants.split(",")) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose among {VARIANTS}")
    torch.set_num_threads(a.threads)
    rows = [row for name in a.models.split(",") for row in run_model(name, a)]
    out = {"threads": a.threads, "torch": torch.__version__, "load_avg": os.getloadavg(), "rows": rows}
    print(markdown(rows))
    print("DECODE_JSON " + json.dumps(out))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
