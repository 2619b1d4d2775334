"""The reference work's learning curve, rlkit against TRL: mean training reward per 10 steps over 50 steps.

    .venv/bin/python -m benchmarks.learning_vs_trl --steps 50                    # needs the `bench` extra (TRL)
    .venv/bin/python -m benchmarks.learning_vs_trl --steps 50 --sft-steps 150    # from a briefly SFT-ed policy

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


def run_side(side: str, steps: int, size: str, threads: int, init: str | None) -> list[float]:
    """Per-step mean rewards of one run of `side` ("rlkit" or "trl")."""
    cmd = [sys.executable, "-m", f"benchmarks.{side}_grpo", "--size", size, "--steps", str(steps), "--warmup", "0",
           "--threads", str(threads)] + (["--init", init] if init else [])
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [s["reward_mean"] for s in parse_record(proc.stdout)["steps"]]


def sft_start(size: str, steps: int, out: str) -> str:
    """The reference model after `steps` SFT steps on 2-digit addition (cached in `out`): a policy that is
    sometimes right, so the rewards of the two sides can differ at all."""
    import torch

    from benchmarks.reference_work import DEFAULT_WORKDIR, ReferenceWork, build_reference
    from rlkit.config import Config
    from rlkit.workers.sft import SFTConfig, run_sft

    torch.set_num_threads(2)
    model_dir, _ = build_reference(ReferenceWork(size=size), DEFAULT_WORKDIR)
    cfg = Config.preset("arithmetic-1m", model={"path": str(model_dir)}, data={"eval_size": 128},
                        cluster={"backend": "local", "threads_per_worker": 2})
    sft = SFTConfig(steps=steps, batch_size=256, micro_batch_size=256, lr=3e-3, weight_decay=0.1, eval_size=128)
    result = run_sft(cfg, out, sft=sft, progress=False)
    print(f"start: {size} reference model after {steps} SFT steps, {result.exact_match:.1%} exact match", flush=True)
    return str(result.model_dir)


def windows(values: list[float], width: int) -> list[float]:
    return [sum(values[i:i + width]) / len(values[i:i + width]) for i in range(0, len(values), width)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--size", default="1m", choices=["1m", "9m"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--sft-steps", type=int, default=0,
                   help="start both sides from the reference model after this many SFT steps (0: the random init, "
                        "whose reward is 0 throughout)")
    p.add_argument("--out", default="runs/learning_vs_trl", help="SFT cache")
    args = p.parse_args(argv)
    init = sft_start(args.size, args.sft_steps, f"{args.out}/sft-{args.size}-{args.sft_steps}") if args.sft_steps else None
    curves = {side: run_side(side, args.steps, args.size, args.threads, init) for side in ("rlkit", "trl")}
    header = " | ".join(f"steps {i + 1}-{min(i + args.window, args.steps)}" for i in range(0, args.steps, args.window))
    print(f"| side | {header} | all steps |")
    print("|---" * (len(range(0, args.steps, args.window)) + 2) + "|")
    for side, rewards in curves.items():
        cells = " | ".join(f"{v:.3f}" for v in windows(rewards, args.window))
        print(f"| {side} | {cells} | {sum(rewards) / len(rewards):.3f} |")


if __name__ == "__main__":
    main()
