"""The HybridFlow paper's placement study, predicted by rlkit.planner (no GPU needed: it is the cost model).

    python -m benchmarks.planner_paper                  # PPO, Llama 7B/13B/34B/70B, 16-128 GPUs, paper testbed
    python -m benchmarks.planner_paper --algo remax --sizes 13b 34b
    python -m benchmarks.planner_paper --device A100-80GB --json out.json

Setup (paper §8.1): all four PPO models of one Llama size, prompt 1024 + response 1024 tokens, 1024 prompts per
iteration, BF16, 16 to 128 A100-80GB in machines of 8. The inter-machine link is 200 Gb/s per machine (the
`HYBRIDFLOW_TESTBED` preset; `--device A100-80GB` gives a 200 Gb/s NIC per GPU instead). For each case the
script prints the planner's best mapping, its predicted iteration time, and the ratio of predicted PPO
throughput between that mapping and "everything colocated on all devices" (1.00x when colocation is chosen).

## What comes out, and where it disagrees with the paper

Paper: colocating all models is best at 16-64 GPUs; split placements win for 13B and 34B at 96-128 GPUs.

Planner, paper testbed (PPO; `-` = the four models do not fit even fully sharded):

    size  16        32        64        96                   128
    7B    coloc     coloc     coloc     coloc                coloc
    13B   coloc     coloc     coloc     coloc (split 0.93x)  coloc (split 0.92x)
    34B   -         coloc     coloc     coloc (split 0.99x)  split 1.02x
    70B   -         -         coloc     coloc                split 1.00x (tie)

- Agrees: colocation at 16-64 GPUs for every size; 34B moves to a split placement at 128 GPUs; the margin for
  splitting grows with device count (13B: 0.89x at 64 -> 0.93x at 96; 34B: 0.98x at 64 -> 1.02x at 128).
- Disagrees: 13B stays colocated at 96-128 and 34B at 96 (by 1 %). Why, in this model: a split gives the actor
  half of the devices for generation, and generation time is memory-bound on weights plus KV cache. Llama-13B
  has no grouped-query attention (0.8 MB of KV per token vs 0.2 MB for 34B), so its decode steps are dominated
  by KV reads, which shrink linearly with devices: halving the actor's devices costs ~9 s of generation at 128
  GPUs, while running actor and critic side by side recovers only ~3 s in prepare/train, because the model's
  training and inference scale at 85-90 % from 64 to 128 GPUs (fixed global batch of 1024: pipeline bubbles and
  gradient synchronisation over the 200 Gb/s links are the only losses it counts). The paper measured a real
  system, where per-GPU efficiency drops faster with shrinking per-GPU work (kernel efficiency, launch and
  scheduling overheads, stragglers, the single controller's dispatch) than this analytical model assumes; such
  costs favour splitting and are not in the model.
- Sensitivity: with a 200 Gb/s NIC per GPU (`--device A100-80GB`) gradient synchronisation is cheap, every
  size stays colocated up to 128 GPUs, and the split placements trail by 2-11 %.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rlkit.planner import (
    GRPO,
    HYBRIDFLOW_TESTBED,
    LLAMA,
    PPO,
    REMAX,
    SAFE_RLHF,
    ClusterSpec,
    PlanError,
    get_device,
    plan,
)

DATAFLOWS = {"ppo": PPO, "remax": REMAX, "safe-rlhf": SAFE_RLHF, "grpo": GRPO}
# The paper's finding per (size, devices) where it states one: colocation at 16-64 GPUs, a split placement for
# 13B and 34B at 96-128 GPUs (7B and 70B at 96-128: not stated).
PAPER = {**{(size, n): "coloc" for size in LLAMA for n in (16, 32, 64)},
         **{(size, n): "split" for size in ("13b", "34b") for n in (96, 128)}}


def run(sizes, devices, device, dataflow) -> list[dict]:
    """Plan every (size, device count); one result row per case."""
    rows = []
    for size in sizes:
        for n in devices:
            row = {"size": size, "devices": n, "paper": PAPER.get((size, n))}
            try:
                p = plan(LLAMA[size], ClusterSpec(device, n // 8, 8), dataflow=dataflow)
            except PlanError as err:
                row.update(best=None, error=str(err))
                rows.append(row)
                continue
            split = len(p.best.groups) > 1
            best_split = next((m for m in p.candidates if len(m.groups) > 1), None)
            row.update(
                best=p.best.label, choice="split" if split else "coloc",
                iteration_s=p.best.iteration_time, tokens_per_s=p.best.throughput,
                colocated_s=p.colocated.iteration_time if p.colocated else None,
                speedup_vs_colocated=p.speedup_vs_colocated,
                best_split=best_split.label if best_split else None,
                best_split_vs_colocated=(best_split.throughput / p.colocated.throughput
                                         if best_split and p.colocated else None),
                stages={s: t for s, t in p.best.stage_times},
                strategies={r: p.best.strategy(r).label for r in p.models},
                search_s=p.search_seconds,
            )
            rows.append(row)
    return rows


def print_table(rows) -> None:
    print(f"{'size':>4} {'GPUs':>4}  {'best mapping':<40} {'iter':>8} {'tokens/s':>9} {'vs coloc':>8} "
          f"{'best split':>10}  paper  agree")
    for r in rows:
        if r["best"] is None:
            print(f"{r['size']:>4} {r['devices']:>4}  does not fit: {r['error'].split(':')[0]}")
            continue
        split = f"{r['best_split_vs_colocated']:.2f}x" if r["best_split_vs_colocated"] else "-"
        agree = "-" if r["paper"] is None else ("yes" if r["paper"] == r["choice"] else "NO")
        print(f"{r['size']:>4} {r['devices']:>4}  {r['best']:<40} {r['iteration_s']:7.1f}s {r['tokens_per_s']:9.0f} "
              f"{r['speedup_vs_colocated']:7.2f}x {split:>10}  {r['paper'] or '-':<5}  {agree}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=list(LLAMA), choices=list(LLAMA))
    ap.add_argument("--devices", nargs="+", type=int, default=[16, 32, 64, 96, 128])
    ap.add_argument("--device", default="testbed", help="'testbed' (the paper's cluster) or a device preset name")
    ap.add_argument("--algo", default="ppo", choices=list(DATAFLOWS))
    ap.add_argument("--json", default=None, help="write the rows to this json file")
    args = ap.parse_args(argv)
    device = HYBRIDFLOW_TESTBED if args.device == "testbed" else get_device(args.device)
    start = time.perf_counter()
    rows = run(args.sizes, args.devices, device, DATAFLOWS[args.algo])
    print(f"{args.algo} on {device.name}, prompt 1024 + response 1024, 1024 prompts per iteration")
    print_table(rows)
    print(f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
