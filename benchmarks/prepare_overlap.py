"""Do the prepare stage's worker calls overlap? `Session.compute` one call at a time against all at once.

    .venv/bin/python -m benchmarks.prepare_overlap --rounds 5
    .venv/bin/python -m benchmarks.prepare_overlap --smoke          # tiny preset, 1 round: the code path only

PPO's prepare stage needs three worker calls on the same batch: "old_logprobs" (actor),
"ref_logprobs" (reference) and "values" (critic). `Session.compute(batch, *fields)` submits
them together and joins them, so roles in different processes should run side by side.
This script builds a PPO Session per placement, generates ONE batch, and then, over
`--rounds` rounds, times

- sequential: `s.compute(b, "old_logprobs")`, then `"ref_logprobs"`, then `"values"`, each
  joined before the next is sent (the figure is their sum);
- concurrent: `s.compute(b, "old_logprobs", "ref_logprobs", "values")`.

The two modes alternate inside each round (which goes first flips every round), so slow
drifts of a shared machine hit both alike. Reported: the median over rounds of each figure,
the ratio concurrent / sequential, and the "process bound": per worker group, the sum of
the sequential medians of the calls it hosts, max over groups (calls in one process queue
behind each other; calls in different processes can overlap). Each call's wall time also
holds the driver's dispatch and join, which overlap too, so concurrent can come in under
the bound.

Placements: "split" puts the actor in one worker group (process) and ref + critic in
another, so at best concurrent = max(old, ref + values); "colocate" puts all three roles in
one process, where nothing can overlap and concurrent should match the sum. Every worker
runs `cluster.threads_per_worker = 1` torch thread (two processes on a 2-core machine: one
core each) and the driver one thread; one Ray cluster serves both placements (the Sessions
join it), so only the Sessions' own start-up is paid twice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

# Field of `Session.compute` -> the role that computes it.
CALLS: dict[str, str] = {"old_logprobs": "actor", "ref_logprobs": "ref", "values": "critic"}


def make_config(preset: str, placement: str, run_dir: str, prompts_per_step: int | None, seed: int):
    """A PPO config on `preset`, one CPU device, one torch thread per worker, no dashboard or W&B."""
    from rlkit.config import Config

    rollout = {} if prompts_per_step is None else {"prompts_per_step": prompts_per_step}
    return Config.preset(
        preset,
        algo={"name": "ppo", "kl_coef": 0.001},  # kl_coef > 0: PPO builds the reference role
        actor={"skip_old_logprobs": False},  # the actor call must really run
        rollout=rollout,
        cluster={"backend": "ray", "placement": placement, "threads_per_worker": 1, "nodes": 1,
                 "devices_per_node": 1, "device": "cpu"},
        logging={"run_dir": run_dir, "wandb": False, "dashboard": False, "eval_every": 0, "save_every": 0},
        seed=seed,
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(session, batch, rounds: int) -> dict[str, list[float]]:
    """Per-round seconds: each call alone (`old_logprobs`, ...), their `sequential` sum, and `concurrent`."""
    fields = tuple(CALLS)
    session.compute(batch, *fields)  # warm-up: first calls pay lazy set-up in the workers
    laps: dict[str, list[float]] = {name: [] for name in (*fields, "sequential", "concurrent")}

    def sequential():
        alone = {f: timed(lambda f=f: session.compute(batch, f)) for f in fields}
        for f, seconds in alone.items():
            laps[f].append(seconds)
        laps["sequential"].append(sum(alone.values()))

    def concurrent():
        laps["concurrent"].append(timed(lambda: session.compute(batch, *fields)))

    for r in range(rounds):
        for mode in ((sequential, concurrent) if r % 2 == 0 else (concurrent, sequential)):
            mode()
    return laps


def summarize(laps: dict[str, list[float]], placement: list[tuple[list[str], int]]) -> dict[str, float]:
    """Medians over rounds, the best overlap given which roles share a process, and the ratios."""
    med = {name: statistics.median(values) for name, values in laps.items()}
    per_group = [sum(med[f] for f, role in CALLS.items() if role in names) for names, _ in placement]
    med["process_bound"] = max(per_group)
    med["ratio"] = med["concurrent"] / med["sequential"]
    med["bound_ratio"] = med["process_bound"] / med["sequential"]
    return med


def run_placement(placement: str, args, run_root: str) -> dict:
    """Build one Session, generate a batch, time the two modes; the summary row."""
    import rlkit

    cfg = make_config(args.preset, placement, run_root, args.prompts_per_step, args.seed)
    t0 = time.perf_counter()
    session = rlkit.Session(cfg)
    try:
        startup_s = time.perf_counter() - t0
        batch = session.generate()
        laps = measure(session, batch, args.rounds)
        row = summarize(laps, session.placement)
        row.update(placement=placement, groups=[names for names, _ in session.placement], rows=len(batch),
                   tokens=int(batch.num_tokens()), startup_s=startup_s, rounds=args.rounds, laps=laps)
    finally:
        session.close()
    return row


def print_table(rows: list[dict]) -> None:
    print("| placement | worker groups | old (s) | ref (s) | values (s) | sequential (s) | concurrent (s) | "
          "process bound (s) | concurrent / sequential | bound / sequential |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        groups = " / ".join("+".join(names) for names in r["groups"])
        print(f"| {r['placement']} | {groups} | {r['old_logprobs']:.3f} | {r['ref_logprobs']:.3f} | "
              f"{r['values']:.3f} | {r['sequential']:.3f} | {r['concurrent']:.3f} | {r['process_bound']:.3f} | "
              f"{r['ratio']:.2f} | {r['bound_ratio']:.2f} |")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="arithmetic-1m", help="a Config preset (its model, data and batch size)")
    p.add_argument("--prompts-per-step", type=int, default=None, help="override the preset's prompts per batch (the "
                   "rollout batch must stay a multiple of actor.mini_batch_size)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of (sequential, concurrent), order flipping")
    p.add_argument("--placements", default="split,colocate", help="comma-separated cluster.placement values")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="arithmetic-tiny, 1 round: the code path only")
    p.add_argument("--json", help="also write the results (with every round's laps) here")
    a = p.parse_args(argv)
    if a.smoke:
        a.preset, a.rounds = "arithmetic-tiny", 1
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    import torch

    torch.set_num_threads(1)  # the driver only dispatches and joins (and makes the rollout prompts)
    from rlkit.cluster import ClusterRuntime

    runtime = ClusterRuntime().start()  # one Ray for both placements: the Sessions join it and leave it up
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="rlkit-overlap-") as run_root:
            for placement in a.placements.split(","):
                rows.append(run_placement(placement, a, run_root))
                print(f"{placement}: " + json.dumps({k: v for k, v in rows[-1].items() if k != "laps"}), flush=True)
    finally:
        runtime.close()
    out = {"preset": a.preset, "prompts_per_step": a.prompts_per_step, "rounds": a.rounds, "nproc": os.cpu_count(),
           "rows": rows}
    print(f"# {a.preset}, PPO, {rows[0]['rows']} rows ({rows[0]['tokens']} tokens) per batch, 1 torch thread per "
          f"worker, median of {a.rounds} round(s), nproc {os.cpu_count()}")
    print_table(rows)
    print("OVERLAP_JSON " + json.dumps({**out, "rows": [{k: v for k, v in r.items() if k != "laps"} for r in rows]}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
