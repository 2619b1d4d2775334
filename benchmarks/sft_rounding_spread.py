"""How far float32 rounding alone moves the demo's SFT result, and where the chunked LM head falls in that spread.

    .venv/bin/python -m benchmarks.sft_rounding_spread                 # 6 arms x 500 steps, ~8 minutes on 2 cores
    .venv/bin/python -m benchmarks.sft_rounding_spread --steps 100 --arms ref:256:0,chunk:256:256

The demo's SFT warm-up (`rlkit.demo.demo_sft_config`: 500 steps of 256 rows at lr 3e-3 on the
`arithmetic-rl` preset's tiny model) trained by several `PolicyWorker`s in one process, on the SAME
batches in the same order, from the same weights. The arms differ only in how the same sums are
computed: `micro_batch_size` (gradient accumulation: another summation order) and
`actor.logits_chunk_size` (the chunked LM head: another GEMM blocking). Mathematically every arm takes
the same steps. Printed: each arm's largest weight difference from the first arm at a few steps,
then each arm's greedy exact match on the eval split (the number the demo and the learning tests use).
"""

from __future__ import annotations

import argparse
import tempfile
import time


def parse_arms(text: str) -> dict[str, dict[str, int]]:
    """"name:micro_batch_size:logits_chunk_size,..." -> {name: PolicyWorker kwargs}."""
    arms = {}
    for item in text.split(","):
        name, micro, chunk = item.split(":")
        arms[name] = {"micro_batch_size": int(micro), "logits_chunk_size": int(chunk)}
    return arms


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--arms", default="ref:256:0,micro128:128:0,micro64:64:0,micro32:32:0,chunk256:256:256,"
                                     "chunk128:256:128,chunk512:256:512,chunk256_micro128:128:256",
                   help="name:micro_batch_size:logits_chunk_size, comma-separated; the first is the reference")
    p.add_argument("--every", type=int, default=100, help="print weight differences every this many steps")
    args = p.parse_args(argv)

    from rlkit.cluster import RoleSpec, WorkerGroup
    from rlkit.config import Config
    from rlkit.data import arithmetic_reward
    from rlkit.demo import demo_sft_config
    from rlkit.workers.policy import PolicyWorker
    from rlkit.workers.sft import SFTTrainer, sft_loss
    from rlkit.workers.stage import greedy_answers
    from transformers import AutoModelForCausalLM

    cfg = Config.preset("arithmetic-rl", cluster={"backend": "local", "threads_per_worker": 1})
    s = demo_sft_config()
    out = tempfile.mkdtemp(prefix="sft-spread-")
    arms = parse_arms(args.arms)
    first = next(iter(arms))
    trainer = SFTTrainer(cfg, sft=s, out_dir=out)  # its data order and starting folder; its own worker is unused
    optim = {"lr": s.lr, "warmup_steps": s.warmup_steps, "lr_schedule": s.lr_schedule, "total_steps": s.steps,
             "min_lr_ratio": s.min_lr_ratio, "weight_decay": s.weight_decay, "grad_clip": s.grad_clip,
             "betas": s.betas}
    base = {"model": trainer.runner.model_dir, "optim": optim, "seed": cfg.seed,
            "tokenizer_path": cfg.model.tokenizer_path}
    group = WorkerGroup(None, {k: RoleSpec(PolicyWorker, kwargs={**base, **v}) for k, v in arms.items()},
                        backend="local")

    def weight_diffs() -> dict[str, float]:
        ref = getattr(group, first).full_state_dict()
        out = {}
        for name in arms:
            if name != first:
                w = getattr(group, name).full_state_dict()
                out[name] = max((w[k] - ref[k]).abs().max().item() for k in ref)
        return out

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = trainer.next_batch()
        for name in arms:
            getattr(group, name).update(batch, sft_loss, mini_batch_size=None)
        if step == 1 or step % args.every == 0:
            diffs = ", ".join(f"{k} {v:.1e}" for k, v in weight_diffs().items())
            print(f"step {step}: max |w - w_{first}|: {diffs}  ({time.perf_counter() - start:.0f} s)", flush=True)

    rows = trainer.runner.eval_rows(s.eval_size)
    print(f"\n| arm | micro_batch_size | logits_chunk_size | exact match ({len(rows['prompt'])} eval prompts) |")
    print("|---|---:|---:|---:|")
    for name, kw in arms.items():
        model = AutoModelForCausalLM.from_pretrained(getattr(group, name).save_pretrained(f"{out}/{name}")).eval()
        responses, eos = greedy_answers(model, trainer.runner.tokenizer, list(rows["prompt"]), cfg.data.max_prompt_len,
                                        max_new_tokens=cfg.rollout.max_new_tokens,
                                        chat_template=cfg.data.use_chat_template)
        em = sum(arithmetic_reward(r, t, e) for r, t, e in zip(responses, rows["ground_truth"], eos)) / len(responses)
        print(f"| {name} | {kw['micro_batch_size']} | {kw['logits_chunk_size']} | {em:.1%} |", flush=True)
    group.close()
    trainer.close()


if __name__ == "__main__":
    main()
