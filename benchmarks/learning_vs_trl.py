"""The reference work's learning curve, rlkit against TRL: mean training reward per 10 steps over 50 steps.

    .venv/bin/python -m benchmarks.learning_vs_trl --steps 50          # needs the `bench` extra (TRL)

One run per side (`benchmarks.rlkit_grpo`, `benchmarks.trl_grpo`: the same model folder, prompts, reward and
GRPO settings as the speed comparison), no warm-up step, in sequence. Both start from the same weights; their
samplers differ, so the curves are two draws of the same experiment, not one trajectory twice. The reward is
the reference work's (the completion starts with the right sum), a hard task for an untrained 1M model:
what matters is that rlkit's curve is no worse than TRL's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks.reference_work import parse_record

REPO = Path(__file__).resolve().parent.parent


def run_side(side: str, steps: int, size: str, threads: int) -> list[float]:
    """Per-step mean rewards of one run of `side` ("rlkit" or "trl")."""
    cmd = [sys.executable, "-m", f"benchmarks.{side}_grpo", "--size", size, "--steps", str(steps), "--warmup", "0",
           "--threads", str(threads)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [s["reward_mean"] for s in parse_record(proc.stdout)["steps"]]


def windows(values: list[float], width: int) -> list[float]:
    return [sum(values[i:i + width]) / len(values[i:i + width]) for i in range(0, len(values), width)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", default="1m", choices=["1m", "9m"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--window", type=int, default=10)
    args = p.parse_args(argv)
    curves = {side: run_side(side, args.steps, args.size, args.threads) for side in ("rlkit", "trl")}
    header = " | ".join(f"steps {i + 1}-{min(i + args.window, args.steps)}" for i in range(0, args.steps, args.window))
    print(f"| side | {header} | all steps |")
    print("|---" * (len(range(0, args.steps, args.window)) + 2) + "|")
    for side, rewards in curves.items():
        cells = " | ".join(f"{v:.3f}" for v in windows(rewards, args.window))
        print(f"| {side} | {cells} | {sum(rewards) / len(rewards):.3f} |")


if __name__ == "__main__":
    main()
