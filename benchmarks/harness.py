"""Run benchmark sides as subprocesses, interleaved (A B A B ...), and print medians, min/max and ratios.

    # rlkit vs TRL on the reference work (3 rounds of A B), with the compute floor
    .venv/bin/python -m benchmarks.harness compare --arms rlkit,trl --rounds 3
    # step time as the model (x10: 1m -> 9m) and the batch (x4: 8 -> 32 prompts) grow
    .venv/bin/python -m benchmarks.harness scaling --arms trl --sizes 1m,9m --prompts 8,32 --steps 3
    # the controller's overhead: rlkit on 1 Ray rank, 2 Ray ranks and the local backend
    .venv/bin/python -m benchmarks.harness compare --arms rlkit:ray:1,rlkit:ray:2,rlkit:local:1 --baseline rlkit:local:1
    # the realistic workload (benchmarks.realistic): SmolLM2-135M-Instruct on chat_sums, natural lengths <= 128
    .venv/bin/python -m benchmarks.harness compare --size smollm2 --arms rlkit:local:1,rlkit,trl --rounds 1 --steps 2

An arm is `side[:backend[:ranks]][/bf16][@threads]` with side `trl` or `rlkit` (`trl@1`: TRL on
one core, e.g. `--arms trl@1,trl@2` to compare thread counts in one run; `/bf16`: the realistic
workload in bfloat16, rlkit's `model.dtype` or TRL's `bf16=True`, e.g. `--arms trl,trl/bf16`). Every run is a fresh
process (`python -m benchmarks.<side>_grpo ...`) that prints one `BENCH_JSON` line;
separate processes of identical code differ by up to 20 % on this machine, so arms
alternate within each round and what is reported is, per metric, the median over a run's
measured steps, then the median / min / max of those over the rounds. Ratios are of the
medians, arm / baseline, from the same invocation.

Threads: every arm gets `--threads` cores in all unless it says `@N` (TRL: torch threads of
its one process; rlkit: `threads // ranks` per worker). `OMP_WAIT_POLICY` is left to OpenMP's
default (threads spin while they wait) unless `--omp-wait-policy` sets it, for every arm alike. On an
idle machine the default is what a user gets and the fastest: PASSIVE (threads sleep) made both
sides' 2-thread steps slower than 1-thread ones. On a machine shared with other jobs, spinning
threads make 2-thread runs up to 10x slower instead (measured here): use `--omp-wait-policy PASSIVE`
there, so that the figures do not benchmark the neighbours.

The fp32 matmul peak per core is measured in this process once per round (the best
single-thread call, see `compute_floor.measure_peak_rate`), and each arm's floor is the
FLOPs of its own step (from its mean prompt/generated token counts) over its cores x the
best per-core peak: `floor/step` = floor time / measured step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.compute_floor import ModelShape, measure_peak_rate, step_flops
from benchmarks.realistic import REAL_SIZE, RealWork
from benchmarks.reference_work import DEFAULT_WORKDIR, EXPECTED_SHAPES, ReferenceWork, build_reference, parse_record

REPO = Path(__file__).resolve().parents[1]
METRICS = ("step_s", "generate_s", "ref_s", "old_s", "learn_s", "sync_s", "gen_tokens_per_s", "gen_tokens",
           "s_per_gen_token", "padding_frac")
RUN_METRICS = ("peak_rss_tree_mb", "peak_rss_self_mb")
LABELS = {"step_s": "step wall (s)", "generate_s": "generate (s)", "ref_s": "ref log-probs (s)",
          "old_s": "old log-probs (s)", "learn_s": "learn (s)", "sync_s": "weight sync (s)",
          "gen_tokens_per_s": "gen tokens/s", "gen_tokens": "gen tokens/step",
          "s_per_gen_token": "step s / gen token", "padding_frac": "padding (train)",
          "peak_rss_tree_mb": "peak RSS tree (MiB)", "peak_rss_self_mb": "peak RSS main (MiB)",
          "floor_frac": "floor/step"}


@dataclass(frozen=True)
class Arm:
    """One benchmarked configuration."""

    side: str
    """"trl" or "rlkit"."""
    backend: str = "ray"
    """rlkit only: "ray" or "local"."""
    ranks: int = 1
    """rlkit only: data-parallel workers."""
    threads: int | None = None
    """Cores of this arm; None = the harness's --threads."""
    bf16: bool = False
    """Realistic workload only: bfloat16 (rlkit `model.dtype`, TRL `bf16=True`) instead of float32."""

    @classmethod
    def parse(cls, spec: str) -> "Arm":
        """`trl`, `rlkit`, `rlkit:local`, `rlkit:ray:2`, any of them with `/bf16` and/or `@threads` (`trl/bf16@1`)."""
        spec, _, threads = spec.partition("@")
        if threads and (not threads.isdigit() or int(threads) < 1):
            raise ValueError(f"arm {spec}@{threads}: threads after '@' must be a positive integer")
        spec, _, variant = spec.partition("/")
        if variant not in ("", "bf16"):
            raise ValueError(f"arm {spec}/{variant}: the only variant after '/' is bf16")
        return dataclasses.replace(cls._parse(spec), threads=int(threads) if threads else None, bf16=variant == "bf16")

    @classmethod
    def _parse(cls, spec: str) -> "Arm":
        parts = spec.split(":")
        if parts[0] not in ("trl", "rlkit") or len(parts) > 3:
            raise ValueError(f"arm {spec!r}: expected trl or rlkit[:ray|local[:ranks]]")
        if parts[0] == "trl":
            if len(parts) > 1:
                raise ValueError(f"arm {spec!r}: TRL has no backend/ranks (it is one process)")
            return cls("trl")
        backend = parts[1] if len(parts) > 1 else "ray"
        if backend not in ("ray", "local"):
            raise ValueError(f"arm {spec!r}: backend must be ray or local, got {backend!r}")
        ranks = int(parts[2]) if len(parts) > 2 else 1
        return cls("rlkit", backend, ranks)

    @property
    def name(self) -> str:
        """The spec string (`trl`, `rlkit:ray:1`, `trl@1`)."""
        name = "trl" if self.side == "trl" else f"rlkit:{self.backend}:{self.ranks}"
        name += "/bf16" if self.bf16 else ""
        return name if self.threads is None else f"{name}@{self.threads}"

    def command(self, work: ReferenceWork | RealWork, threads: int, workdir: str) -> list[str]:
        """The subprocess command of one run (`threads`: the harness default, unless the arm names its own)."""
        threads = self.threads or threads
        cmd = [sys.executable, "-m", f"benchmarks.{self.side}_grpo", "--size", work.size,
               "--prompts-per-step", str(work.prompts_per_step), "--steps", str(work.steps),
               "--warmup", str(work.warmup_steps), "--threads", str(threads), "--workdir", workdir]
        if work.fixed_length:
            cmd.append("--fixed-length")
        if self.side == "rlkit":
            cmd += ["--backend", self.backend, "--ranks", str(self.ranks)]
        if isinstance(work, RealWork):
            cmd += dataclasses.replace(work, dtype="bfloat16" if self.bf16 else work.dtype).cli_args()
        elif self.bf16:
            raise ValueError(f"arm {self.name}: /bf16 is for the realistic workload (--size {REAL_SIZE}) only")
        return cmd


def run_env(wait_policy: str | None) -> dict[str, str]:
    """The environment of every run (identical for all arms; OMP_NUM_THREADS is set per run)."""
    env = dict(os.environ)
    env.update(PYTHONPATH=f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep),
               TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", WANDB_MODE="disabled")
    if wait_policy:
        env["OMP_WAIT_POLICY"] = wait_policy
    return env


def run_once(arm: Arm, work: ReferenceWork, threads: int, workdir: str, env: dict, timeout: float) -> dict:
    """Run one arm once; its record, or {"error": ...} with the tail of its output."""
    env = {**env, "OMP_NUM_THREADS": str(arm.threads or threads)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(arm.command(work, threads, workdir), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        return {"error": f"exit code {proc.returncode}:\n{tail}"}
    try:
        record = parse_record(proc.stdout)
    except ValueError as e:
        return {"error": str(e)}
    record["process_wall_s"] = wall
    return record


def run_summary(record: dict) -> dict[str, float | None]:
    """Per-run values: the median over the run's measured steps of each metric, plus the run-level peaks."""
    out: dict[str, float | None] = {}
    for m in METRICS:
        values = [v for v in (_step_value(s, m) for s in record["steps"]) if v is not None]
        out[m] = statistics.median(values) if values else None
    for m in RUN_METRICS:
        out[m] = record.get(m)
    steps = record["steps"]
    out["prompt_tokens"] = statistics.mean(s["prompt_tokens"] for s in steps) if steps else None
    return out


def _step_value(step: dict, metric: str) -> float | None:
    """One metric of one step record: a field, one of its `extra` (padding_frac), or derived (s per gen token)."""
    if metric == "s_per_gen_token":
        return step["step_s"] / step["gen_tokens"] if step.get("gen_tokens") else None
    value = step.get(metric)
    return value if value is not None else step.get("extra", {}).get(metric)


def prompt_check(raw: dict) -> str:
    """Whether every run of every arm trained on the same prompts at each measured step (their digests)."""
    runs = {name: [[s.get("extra", {}).get("prompts_digest") for s in r["steps"]] for r in recs if "error" not in r]
            for name, recs in raw["results"].items()}
    seqs = [seq for recs in runs.values() for seq in recs]
    if not seqs or any(d is None for seq in seqs for d in seq):
        return "prompts: not recorded by every run"
    if all(seq == seqs[0] for seq in seqs):
        return f"prompts: identical on every run ({len(seqs[0])} measured steps, digests {', '.join(seqs[0])})"
    return "prompts: DIFFER between runs: " + "; ".join(f"{n}: {recs}" for n, recs in runs.items())


def spread(values: list[float | None]) -> dict[str, float] | None:
    """median / min / max over runs (None when no run measured it)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def model_shape(work: ReferenceWork | RealWork, workdir: str) -> ModelShape:
    """The matmul shape of `work`'s model, read from the saved folder every side loads."""
    from transformers import AutoConfig

    from benchmarks import realistic

    model_dir = realistic.model_dir(work) if isinstance(work, RealWork) else build_reference(work, workdir)[0]
    return ModelShape.of(AutoConfig.from_pretrained(model_dir))


def step_total_flops(shape: ModelShape, batch: int, summary: dict) -> float | None:
    """Matmul FLOPs of one arm's step from its own mean prompt/generated token counts (None if not reported)."""
    if not summary.get("gen_tokens") or not summary.get("prompt_tokens"):
        return None
    return step_flops(shape, batch, summary["prompt_tokens"] / batch, max(1.0, summary["gen_tokens"] / batch)).total


def interleave(arms: list[Arm], work: ReferenceWork, rounds: int, threads: int, workdir: str, env: dict,
               timeout: float, retries: int = 0, log=print) -> dict:
    """Run every arm `rounds` times, A B A B ..., measuring the per-core matmul peak once per round.

    A failed run is retried up to `retries` times (Ray's node start-up gives up after a fixed
    30 s, which a busy 2-core machine sometimes exceeds); the failures are kept in the record.
    """
    results: dict[str, list[dict]] = {a.name: [] for a in arms}
    rates = []
    for r in range(rounds):
        rates.append(measure_peak_rate(threads, seconds=1.0)["per_core_best"])
        # reverse the order every other round so neither arm always runs first (warm caches, neighbours' load)
        order = arms if r % 2 == 0 else list(reversed(arms))
        for arm in order:
            log(f"[round {r + 1}/{rounds}] {arm.name} {work.size} x{work.prompts_per_step} prompts ...",
                file=sys.stderr)
            failures = []
            for attempt in range(retries + 1):
                rec = run_once(arm, work, threads, workdir, env, timeout)
                if "error" not in rec:
                    break
                failures.append(rec["error"])
                log(f"  {arm.name} FAILED (attempt {attempt + 1}/{retries + 1}): {rec['error']}", file=sys.stderr)
                time.sleep(5)
            if failures and "error" not in rec:
                rec["failed_attempts"] = failures
            results[arm.name].append(rec)
    return {"results": results, "per_core_gflops": rates}


def summarise(arms: list[Arm], work: ReferenceWork, raw: dict, shape: ModelShape, per_core_gflops: float,
              threads: int) -> dict:
    """{arm: {metric: spread}} plus step FLOPs, floor time and floor/step, from `interleave`'s output.

    An arm's floor uses its own core count: per_core_gflops x (arm threads or `threads`).
    """
    out = {}
    for arm in arms:
        runs = [run_summary(r) for r in raw["results"][arm.name] if "error" not in r]
        table = {m: spread([s[m] for s in runs]) for m in (*METRICS, *RUN_METRICS)}
        rate = per_core_gflops * (arm.threads or threads) * 1e9
        flops = [step_total_flops(shape, work.batch_size, s) for s in runs]
        floors = [f / rate if f else None for f in flops]
        table["flops"] = spread(flops)
        table["floor_s"] = spread(floors)
        table["floor_frac"] = spread([f / s["step_s"] if f and s["step_s"] else None for f, s in zip(floors, runs)])
        out[arm.name] = table
    return out


def format_compare(arms: list[Arm], summary: dict, baseline: str | None) -> str:
    """A text table: one row per metric, per arm median [min, max], and arm/baseline ratios."""
    names = [a.name for a in arms]
    base = baseline if baseline in summary else None
    others = [n for n in names if n != base]
    width = {n: max(22, len(f"{n}/{base}") + 2) for n in others}
    head = f"{'metric':<22}" + "".join(f"{n + ' median [min, max]':>34}" for n in names)
    if base:
        head += "".join(f"{n + '/' + base:>{width[n]}}" for n in others)
    lines = [head, "-" * len(head)]
    for m in (*METRICS, *RUN_METRICS, "floor_frac"):
        row = f"{LABELS[m]:<22}"
        for n in names:
            s = summary[n][m]
            cell = "n/a" if s is None else f"{_num(s['median'])} [{_num(s['min'])}, {_num(s['max'])}]"
            row += f"{cell:>34}"
        if base:
            for n in others:
                a, b = summary[n][m], summary[base][m]
                ratio = a["median"] / b["median"] if a and b and b["median"] else None
                row += f"{'n/a' if ratio is None else f'{ratio:.2f}':>{width[n]}}"
        lines.append(row)
    return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _failed(raw: dict) -> bool:
    return any("error" in r for runs in raw["results"].values() for r in runs)


def cmd_compare(a) -> int:
    arms = [Arm.parse(s) for s in a.arms.split(",")]
    if a.size == REAL_SIZE:
        if a.fixed_length:
            raise SystemExit(f"--size {REAL_SIZE} has natural lengths: --fixed-length does not apply")
        work = RealWork(model=a.model, prompts_per_step=a.prompts, samples_per_prompt=a.samples,
                        max_new_tokens=a.max_new_tokens, steps=a.steps, warmup_steps=a.warmup,
                        token_budget=a.token_budget, micro_batch_size=a.micro_batch)
    else:
        work = ReferenceWork(size=a.size, prompts_per_step=a.prompts, steps=a.steps, warmup_steps=a.warmup,
                             fixed_length=a.fixed_length)
    t0 = time.perf_counter()
    raw = interleave(arms, work, a.rounds, a.threads, a.workdir, run_env(a.omp_wait_policy), a.timeout, a.retries)
    per_core = max(raw["per_core_gflops"])  # one machine: the best peak of the invocation
    summary = summarise(arms, work, raw, model_shape(work, a.workdir), per_core, a.threads)
    baseline = a.baseline or ("trl" if "trl" in summary else arms[0].name)
    print(f"# {work.size} model, {work.prompts_per_step} prompts x {work.samples_per_prompt} samples, "
          f"{work.max_new_tokens} new tokens, {work.steps} steps after {work.warmup_steps} warm-up; "
          f"{a.rounds} rounds interleaved; {a.threads} threads per arm unless @N; "
          f"OMP_WAIT_POLICY={a.omp_wait_policy or '(unset)'}; matmul peak {per_core:.1f} GFLOP/s per core (rounds: "
          f"{', '.join(f'{r:.1f}' for r in raw['per_core_gflops'])}); invocation {time.perf_counter() - t0:.0f} s")
    print(format_compare(arms, summary, baseline))
    if isinstance(work, RealWork):
        print("natural lengths: each side generates its own number of tokens; compare gen tokens/s and "
              "step s / gen token besides the step time")
        print(prompt_check(raw))
        for arm in arms:
            ok = [r for r in raw["results"][arm.name] if "error" not in r]
            if ok:
                print(f"settings {arm.name}: {json.dumps(ok[0].get('settings'))}")
    _write_json(a.json, {"args": vars(a), "raw": raw, "summary": summary})
    return 1 if _failed(raw) else 0


def cmd_scaling(a) -> int:
    arms = [Arm.parse(s) for s in a.arms.split(",")]
    env = run_env(a.omp_wait_policy)
    rows = []
    t0 = time.perf_counter()
    for size in a.sizes.split(","):
        for prompts in (int(p) for p in a.prompts.split(",")):
            work = ReferenceWork(size=size, prompts_per_step=prompts, steps=a.steps, warmup_steps=a.warmup,
                                fixed_length=a.fixed_length)
            rows.append((work, interleave(arms, work, a.rounds, a.threads, a.workdir, env, a.timeout, a.retries)))
    failed = any(_failed(raw) for _, raw in rows)
    per_core = max(r for _, raw in rows for r in raw["per_core_gflops"])
    rows = [(w, summarise(arms, w, raw, model_shape(w, a.workdir), per_core, a.threads), raw) for w, raw in rows]
    base_summary = rows[0][1]
    print(f"# scaling: {a.steps} steps after {a.warmup} warm-up, {a.rounds} round(s), {a.threads} threads per arm "
          f"unless @N, OMP_WAIT_POLICY={a.omp_wait_policy or '(unset)'}; matmul peak {per_core:.1f} GFLOP/s per core; "
          f"invocation {time.perf_counter() - t0:.0f} s")
    head = (f"{'arm':<14}{'size':>5}{'batch':>7}{'step s [min, max]':>26}{'x time':>8}{'x FLOPs':>9}"
            f"{'gen tok/s':>11}{'floor/step':>12}")
    print(head)
    print("-" * len(head))
    nan = float("nan")
    for arm in arms:
        for work, summary, _ in rows:
            s, b = summary[arm.name], base_summary[arm.name]
            st = s["step_s"]
            if st is None:
                print(f"{arm.name:<14}{work.size:>5}{work.batch_size:>7}{'n/a':>26}")
                continue
            x_time = st["median"] / b["step_s"]["median"] if b["step_s"] else nan
            x_flops = s["flops"]["median"] / b["flops"]["median"] if s["flops"] and b["flops"] else nan
            tps = s["gen_tokens_per_s"]["median"] if s["gen_tokens_per_s"] else nan
            ff = s["floor_frac"]["median"] if s["floor_frac"] else nan
            cell = f"{_num(st['median'])} [{_num(st['min'])}, {_num(st['max'])}]"
            print(f"{arm.name:<14}{work.size:>5}{work.batch_size:>7}{cell:>26}"
                  f"{x_time:>8.2f}{x_flops:>9.2f}{tps:>11.0f}{ff:>12.3f}")
    _write_json(a.json, {"args": vars(a), "rows": [{"work": vars(w), "summary": s, "raw": r} for w, s, r in rows]})
    return 1 if failed else 0


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("compare", "scaling"):
        s = sub.add_parser(name)
        s.add_argument("--arms", default="rlkit,trl",
                       help="comma-separated arms: trl or rlkit[:ray|local[:ranks]], each optionally @threads")
        s.add_argument("--rounds", type=int, default=3 if name == "compare" else 1)
        s.add_argument("--steps", type=int, default=10 if name == "compare" else 3)
        s.add_argument("--warmup", type=int, default=1)
        s.add_argument("--fixed-length", action="store_true",
                       help="every completion exactly 16 tokens on both sides (equal generated tokens)")
        s.add_argument("--threads", type=int, default=2, help="cores per arm (2 = all of this machine)")
        s.add_argument("--omp-wait-policy", default="", help="OMP_WAIT_POLICY of every run ('' = unset: OpenMP's "
                       "default; PASSIVE on a machine shared with other jobs)")
        s.add_argument("--timeout", type=float, default=600, help="seconds per run")
        s.add_argument("--retries", type=int, default=2, help="re-runs of a failed run (e.g. Ray start-up timeouts)")
        s.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
        s.add_argument("--json", default=None, help="also write every record and summary to this file")
        if name == "compare":
            s.add_argument("--size", default="1m", choices=[*sorted(EXPECTED_SHAPES), REAL_SIZE],
                           help=f"reference work, or {REAL_SIZE}: the realistic workload (benchmarks.realistic)")
            s.add_argument("--prompts", type=int, default=8)
            d = RealWork()
            s.add_argument("--samples", type=int, default=d.samples_per_prompt, help=f"{REAL_SIZE}: samples per prompt")
            s.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help=f"{REAL_SIZE}: longest completion")
            s.add_argument("--token-budget", type=int, default=d.token_budget,
                           help=f"{REAL_SIZE}: rlkit's actor.max_tokens_per_micro_batch (0 = rows)")
            s.add_argument("--micro-batch", type=int, default=d.micro_batch_size,
                           help=f"{REAL_SIZE}: rows per micro-batch (TRL per_device_train_batch_size; 0 = whole batch)")
            s.add_argument("--model", default="", help=f"{REAL_SIZE}: model folder (default: SmolLM2-135M-Instruct)")
            s.add_argument("--baseline", default=None, help="arm the ratios divide by (default: trl, else the first)")
        else:
            s.add_argument("--sizes", default="1m,9m")
            s.add_argument("--prompts", default="8,32", help="prompts per step to try (x8 samples each)")
    a = p.parse_args(argv)
    if a.omp_wait_policy and "torch" not in sys.modules:
        # the matmul rate measured in this process must see the same OpenMP setting as the runs
        os.environ["OMP_WAIT_POLICY"] = a.omp_wait_policy
    return {"compare": cmd_compare, "scaling": cmd_scaling}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
