"""Synchronous against one-step-off training (`rollout.async_steps`), side by side in one invocation.

    .venv/bin/python -m benchmarks.async_pipeline --steps 40 --every 10           # arithmetic, from the SFT policy
    .venv/bin/python -m benchmarks.async_pipeline --real --steps 4                # SmolLM2-135M on chat_sums

Arms (`--arms`, comma-separated `name:async_steps:threads[:rollout_is]`): on the Ray backend, the actor on one rank
(its hf engine generates in the synchronous arms) and, with async_steps >= 1, a rollout pool of one rank;
`threads` is each process's torch threads. The default compares the synchronous loop with 2 threads (the
machine's two cores for one process) and with 1, against one-step-off with 1 thread per process (two
processes, one core each), without and with the token-level importance weights (`algo.rollout_is =
"token"`, decoupled PPO against the pool's log-probs). Step time is the mean over the steps after the first two (start-up and the
pipeline filling); `wait` is the trainer waiting for rollouts, the idle fractions come from the pipeline's
spans. Arithmetic: the `arithmetic-rl` preset from the demo's SFT policy (cached under `--out/sft`), greedy
accuracy on the 512 eval prompts every `--every` steps. Real: the `chat-sums-smollm2` preset (`make
real-model`), 8 prompts x 4 samples up to 64 new tokens, bf16. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

DEFAULT_ARMS = "sync-2t:0:2,sync-1t:0:1,one-step-off:1:1,one-step-off-is:1:1:token"


def run_arm(cfg, steps: int, every: int) -> dict:
    import rlkit

    start = time.perf_counter()
    with rlkit.Session(cfg) as s:
        accuracy = [s.evaluate()["eval/accuracy"]] if every else []
        history: list[dict] = []
        for _ in range(steps // every if every else 1):
            history += s.train(every or steps)
            if every:
                accuracy.append(s.evaluate()["eval/accuracy"])
    tail = history[2:] or history

    def mean(key: str) -> float:
        values = [h[key] for h in tail if key in h]
        return sum(values) / len(values) if values else float("nan")

    return {"accuracy": accuracy, "step": mean("time/step"), "generate": mean("time/generate"),
            "learn": mean("time/learn"), "wait": mean("pipeline/wait_seconds"),
            "trainer_idle": mean("pipeline/trainer_idle_frac"), "rollout_idle": mean("pipeline/rollout_idle_frac"),
            "staleness": mean("async/staleness_mean"), "reward": [h["reward/mean"] for h in history],
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default=DEFAULT_ARMS, help="comma-separated name:async_steps:threads[:rollout_is]")
    p.add_argument("--seed", type=int, default=0, help="rollout.seed of every arm")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--every", type=int, default=10, help="evaluate every this many steps (arithmetic; 0 = never)")
    p.add_argument("--real", action="store_true", help="SmolLM2-135M-Instruct on chat_sums instead of arithmetic")
    p.add_argument("--out", default="runs/async_pipeline", help="SFT cache and run directories")
    args = p.parse_args(argv)

    import rlkit

    if args.real:
        from rlkit.data.gguf import prepare_smollm2

        base = rlkit.Config.preset("chat-sums-smollm2", model={"path": str(prepare_smollm2()), "dtype": "bfloat16"},
                                   rollout={"prompts_per_step": 8, "n": 4, "max_new_tokens": 64,
                                            "gather_weights": "always"},  # bf16 on one rank: see realistic.py
                                   actor={"mini_batch_size": 32, "micro_batch_size": 8})
        every = 0
    else:
        from rlkit.demo import demo_sft_config
        from rlkit.workers.sft import run_sft

        base = rlkit.Config.preset("arithmetic-rl", cluster={"backend": "local", "threads_per_worker": 1})
        sft = run_sft(base, f"{args.out}/sft", sft=demo_sft_config(), progress=True)
        base = base.override({"model.path": str(sft.model_dir)})
        every = args.every
    rows = ["| arm | async_steps | threads per process | rollout_is | step s | generate s | learn s | trainer wait s | "
            "trainer idle | rollout pool idle | mean staleness | accuracy | gain | reward first 5 -> last 5 | total s |",
            "|---" * 15 + "|"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for arm in args.arms.split(","):
        name, k, threads, *rest = arm.split(":")
        rollout_is = rest[0] if rest and rest[0] else None
        cfg = base.override({"rollout.async_steps": int(k), "cluster.backend": "ray",
                             "cluster.threads_per_worker": int(threads), "logging.run_dir": args.out,
                             "logging.run_name": f"{name}-{stamp}", "logging.dashboard": False,
                             "algo.rollout_is": rollout_is, "rollout.seed": args.seed})
        r = run_arm(cfg, args.steps, every)
        acc = r["accuracy"]
        accuracy = " / ".join(f"{a:.1%}" for a in acc) if acc else "-"
        gain = f"{100 * (acc[-1] - acc[0]):+.1f}" if acc else "-"
        rew = r["reward"]
        reward = f"{sum(rew[:5]) / len(rew[:5]):.3f} -> {sum(rew[-5:]) / len(rew[-5:]):.3f}"
        row = (f"| {name} | {k} | {threads} | {rollout_is or '-'} | {r['step']:.3f} | {r['generate']:.3f} | {r['learn']:.3f} | "
               f"{r['wait']:.3f} | {r['trainer_idle']:.2f} | {r['rollout_idle']:.2f} | {r['staleness']:.2f} | "
               f"{accuracy} | {gain} | {reward} | {r['seconds']:.0f} |")
        rows.append(row)
        print(row, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
