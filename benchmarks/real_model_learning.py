"""GRPO on a real pretrained instruct model on a CPU: SmolLM2-135M-Instruct on the `chat_sums` task.

    make real-model                                                   # once per machine (the model)
    .venv/bin/python -m benchmarks.real_model_learning --steps 30 --every 5
    .venv/bin/python -m benchmarks.real_model_learning --arms random --steps 30 --every 10   # the control

Each arm runs the `chat-sums-smollm2` preset (GRPO, 8 prompts x 8 samples of 20 tokens, lr 3e-6, no KL,
one optimizer step per RL step, fp32, the local backend) and measures greedy accuracy on the 64 held-out
sums before RL and every `--every` steps, scored by the reply's last number (the task's rule).
`random` is the control: the same run with a coin-flip reward of the same mean as the real one's
first step (30% ones), which must not raise the accuracy: the gain is the reward's doing.
Prints a markdown table and writes it as JSON to `--out/curves.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

ARMS = ("reward", "random")


def coin_flip_reward(p: float, seed: int = 0):
    rng = random.Random(seed)
    return lambda text, truth, eos: float(rng.random() < p)


def run_arm(cfg, steps: int, every: int, reward_fn=None) -> dict:
    """{"accuracy": [at 0, every, ...], "eval_reward": [...], "train_reward": [per step], "seconds"}."""
    import rlkit

    start = time.perf_counter()
    with rlkit.Session(cfg, reward_fn=reward_fn, eval_fn=rlkit.data.tasks.get_task("chat_sums").reward) as s:
        first = s.evaluate()
        out = {"accuracy": [first["eval/accuracy"]], "eval_reward": [first["eval/reward"]], "train_reward": []}
        for _ in range(steps // every):
            history = s.train(every)
            out["train_reward"] += [h["reward/mean"] for h in history]
            ev = s.evaluate()
            out["accuracy"].append(ev["eval/accuracy"])
            out["eval_reward"].append(ev["eval/reward"])
            print(f"  step {s.steps_done}: eval accuracy {ev['eval/accuracy']:.1%}, train reward "
                  f"{sum(out['train_reward'][-every:]) / every:.3f}", flush=True)
    out["seconds"] = time.perf_counter() - start
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arms", default="reward", help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--model", default=None, help="model folder (default: the preset's, from `make real-model`)")
    p.add_argument("--out", default="runs/real_model_learning")
    args = p.parse_args(argv)

    import rlkit  # noqa: F401  (rlkit.data.tasks is imported through it)
    import rlkit.data.tasks

    arms = [a for a in args.arms.split(",") if a]
    for arm in arms:
        if arm not in ARMS:
            raise SystemExit(f"--arms: unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    results = {}
    for arm in arms:
        overrides = {"logging": {"run_dir": args.out, "run_name": arm, "dashboard": False},
                     "cluster": {"backend": "local"}}
        if args.model:
            overrides["model"] = {"path": args.model}
        cfg = rlkit.Config.preset("chat-sums-smollm2", **overrides)
        print(f"{arm}:", flush=True)
        results[arm] = run_arm(cfg, args.steps, args.every, coin_flip_reward(0.3) if arm == "random" else None)

    steps = list(range(0, args.steps + 1, args.every))
    print("\n| arm | " + " | ".join(f"step {k}" for k in steps) + " | minutes |")
    print("|---|" + "---|" * (len(steps) + 1))
    for arm, r in results.items():
        cells = " | ".join(f"{a:.1%}" for a in r["accuracy"])
        print(f"| {arm} | {cells} | {r['seconds'] / 60:.1f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "curves.json").write_text(json.dumps({"steps": steps, **results}, indent=1))


if __name__ == "__main__":
    main()
