"""Greedy eval accuracy curves of every algorithm from the demo's SFT policy (the longer runs behind
`tests/test_algorithms_learning.py`).

    .venv/bin/python -m benchmarks.learning_curves --steps 60 --every 10
    .venv/bin/python -m benchmarks.learning_curves --algos grpo,remax --steps 30   # a subset

The SFT warm-up (`rlkit.demo.demo_sft_config`) is cached under `--out/sft`, as in `rlkit demo`.
Each row: `arithmetic-rl` preset, local backend, one torch thread, greedy exact match on the
512 eval prompts before RL and every `--every` steps. `random` is the control: GRPO on a
coin-flip reward (40% ones), which must not raise the accuracy. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

ALGOS = ("grpo", "dr_grpo", "dapo", "gspo", "rloo", "remax", "reinforce_pp", "ppo", "safe_rlhf", "random")


def run_curve(cfg, steps: int, every: int, reward_fn=None) -> tuple[list[float], list[float], float]:
    """(accuracy at 0, every, 2*every, ...; mean training cost per step; seconds)."""
    import rlkit

    start = time.perf_counter()
    with rlkit.Session(cfg, reward_fn=reward_fn) as s:
        accuracy = [s.evaluate()["eval/accuracy"]]
        costs: list[float] = []
        for _ in range(steps // every):
            history = s.train(every)
            costs += [h.get("cost/mean", float("nan")) for h in history]
            accuracy.append(s.evaluate()["eval/accuracy"])
    return accuracy, costs, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", default=",".join(ALGOS), help=f"comma-separated, from {', '.join(ALGOS)}")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=10)
    p.add_argument("--out", default="runs/learning_curves", help="SFT cache and run directories")
    p.add_argument("--safe-limit", type=float, default=0.16, help="algo.cost_limit of the safe_rlhf row")
    args = p.parse_args(argv)

    import rlkit
    from rlkit.demo import demo_sft_config
    from rlkit.workers.sft import run_sft

    torch.set_num_threads(1)
    base = rlkit.Config.preset("arithmetic-rl", cluster={"backend": "local", "threads_per_worker": 1})
    sft = run_sft(base, f"{args.out}/sft", sft=demo_sft_config(), progress=True)
    print(f"SFT policy: {sft.exact_match:.1%} exact match on the SFT eval prompts ({sft.model_dir})", flush=True)

    header = "| algorithm | " + " | ".join(f"step {k * args.every}" for k in range(args.steps // args.every + 1))
    rows = [header + " | gain | train cost first 5 -> last 5 steps | seconds |",
            "|---" * (args.steps // args.every + 5) + "|"]
    for name in args.algos.split(","):
        if name not in ALGOS:
            raise SystemExit(f"--algos: unknown {name!r}; choose from {', '.join(ALGOS)}")
        algo = "grpo" if name == "random" else name
        cfg = base.override({"algo.name": algo, "model.path": str(sft.model_dir),
                             "logging.run_dir": args.out, "logging.run_name": name, "logging.dashboard": False})
        if name == "safe_rlhf":
            cfg = cfg.override({"algo.cost_limit": args.safe_limit, "algo.lagrange_lr": 1.0})
        coin = random.Random(0)
        reward_fn = (lambda text, truth, eos: float(coin.random() < 0.4)) if name == "random" else None
        accuracy, costs, seconds = run_curve(cfg, args.steps, args.every, reward_fn)
        cost = f"{sum(costs[:5]) / 5:.3f} -> {sum(costs[-5:]) / 5:.3f}"
        row = (f"| {name} | " + " | ".join(f"{a:.1%}" for a in accuracy)
               + f" | {100 * (accuracy[-1] - accuracy[0]):+.1f} | {cost} | {seconds:.0f} |")
        rows.append(row)
        print(row, flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
