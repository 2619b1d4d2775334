"""Learning in the built-in multi-turn environments on the tiny model (CPU, local backend).

    .venv/bin/python -m benchmarks.env_learning --arms guess,guess-random --seeds 0,1,2 --steps 60
    .venv/bin/python -m benchmarks.env_learning --arms guess --algo ppo --steps 60
    .venv/bin/python -m benchmarks.env_learning --arms calculator --steps 30 --temperature 0.7,1.0

Every arm starts from the preset's warm start (`rlkit.envs.warmup.warm_start_for`: SFT on a scripted
player's episodes) and runs RL with the preset's recipe:
- `guess`: `guess-number-tiny` (guess 1-7 in three turns, answers "higher 5-7" / "lower 1-3");
- `guess-random`: the control: the same run, each episode's reward replaced by a coin flip of the warm
  start's success rate paid whatever the play, which must not teach the game (the gain is the reward's
  doing; its sampled "success" is the coin's rate);
- `calculator`: `calculator-tiny` (2-digit products, a multiply tool); it also measures the same model on the
  same eval rows without the tool (one turn, the task's own rule).
Reports greedy success on the eval split before and after, and the sampled success (and tool calls) of the
first and last 10 steps. Prints a markdown table row per run; `--out` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def coin_flip(env_class, p: float, seed: int):
    """`env_class` whose rewards are replaced by one coin flip of probability `p` per episode, paid on its first
    step whatever the policy does (the game is played and ends as before): a reward that carries no
    information about the policy's play."""
    rng = random.Random(seed)

    class CoinFlip(env_class):
        def reset(self, sample):
            self.coin, self.first = float(rng.random() < p), True
            return super().reset(sample)

        def step(self, action_text):
            result = super().step(action_text)
            result.reward, self.first = (self.coin if self.first else 0.0), False
            return result

    CoinFlip.__name__ = f"CoinFlip{env_class.__name__}"
    return CoinFlip


def run(arm: str, *, seed: int, steps: int, algo: str, temperature: float | None, out_dir: Path) -> dict:
    import rlkit
    from rlkit.envs.builtin import builtin_env
    from rlkit.envs.warmup import warm_start_for

    preset = "calculator-tiny" if arm == "calculator" else "guess-number-tiny"
    cfg = rlkit.Config.preset(preset, algo=algo, seed=seed, cluster={"backend": "local", "threads_per_worker": 1},
                              logging={"run_dir": str(out_dir / "runs"), "run_name": None, "dashboard": False})
    if temperature is not None:
        cfg = cfg.override({"rollout.temperature": temperature})
    cfg = cfg.override({"model.path": str(warm_start_for(cfg))})
    row = {"arm": arm, "algo": algo, "seed": seed, "steps": steps, "temperature": cfg.rollout.temperature}
    if arm == "calculator":
        with rlkit.Session(cfg.override({"env.name": None})) as s:
            row["without_tool"] = s.evaluate()["eval/accuracy"]
    env = None
    if arm == "guess-random":
        env = coin_flip(builtin_env("guess_number"), p=0.53, seed=seed)  # the warm start's sampled success
    start = time.perf_counter()
    with rlkit.Session(cfg, env=env) as s:
        played, real = s.env_rollout.make_env, builtin_env(cfg.env.name)
        s.env_rollout.make_env = real  # greedy games: scored by the real rule
        row["greedy_before"] = s.evaluate()["eval/accuracy"]
        s.env_rollout.make_env = played
        history = s.train(steps)
        s.env_rollout.make_env = real
        row["greedy_after"] = s.evaluate()["eval/accuracy"]
    row["seconds"] = round(time.perf_counter() - start, 1)

    def mean(key, part):
        return round(sum(h.get(key, 0.0) for h in part) / len(part), 3)

    first, last = history[:10], history[-10:]
    row["sampled_success"] = (mean("env/success", first), mean("env/success", last))
    if arm == "calculator":
        row["tool_calls"] = (mean("env/tool_calls", first), mean("env/tool_calls", last))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default="guess,guess-random,calculator")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--algo", default="grpo")
    parser.add_argument("--temperature", default="", help="comma-separated rollout temperatures (default: the preset's)")
    parser.add_argument("--out", default="runs/bench-env-learning")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    temps = [float(t) for t in args.temperature.split(",") if t] or [None]
    rows = []
    print("| arm | algo | seed | T | steps | without tool | greedy before -> after | sampled success first 10 -> last 10 "
          "| tool calls | seconds |\n|---|---|---|---|---|---|---|---|---|---|")
    for arm in args.arms.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for temp in temps:
                row = run(arm, seed=seed, steps=args.steps, algo=args.algo, temperature=temp, out_dir=out_dir)
                rows.append(row)
                before = f"{row['greedy_before']:.1%}"
                print(f"| {arm} | {row['algo']} | {seed} | {row['temperature']} | {row['steps']} | "
                      f"{format(row['without_tool'], '.1%') if 'without_tool' in row else '-'} | "
                      f"{before} -> {row['greedy_after']:.1%} | {row['sampled_success'][0]:.1%} -> "
                      f"{row['sampled_success'][1]:.1%} | {row.get('tool_calls', '-')} | {row['seconds']} |", flush=True)
    (out_dir / "env_learning.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
