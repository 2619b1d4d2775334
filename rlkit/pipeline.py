"""Asynchronous RL: rollouts generated ahead of the trainer on a pool of their own, with a staleness bound.

`rollout.async_steps = k >= 1` turns `s.step()` (and so `s.train()`) into a pipeline. A rollout pool
(`rlkit.rollout.pool.RolloutWorker` on `rollout.pool_devices` ranks) generates while the trainer prepares and
learns on an earlier batch; after every update the actor's weights are pushed to the pool. One-step-off (k = 1):

    rollout pool:   gen 1 | gen 2           | gen 3           | gen 4 ...
    trainer:              | prepare+learn 1 | prepare+learn 2 | prepare+learn 3
                                  push v1 ^         push v2 ^

The generation for step j is submitted right after the push of version j - 1 - k (at the start: version 0),
and a pool rank runs its calls in the order they were submitted, so it samples with that version; the
trainer learns it at version j - 1. Every trained sample is therefore at most k updates old, which `step`
checks on the version the pool stamped on each row (`Batch.policy_version`). A batch found older than
that (the trainer learned outside the pipeline meanwhile: `s.learn` in a cell) is thrown away and its
prompts drawn again on current weights, so no prompt is lost or used twice.

What is measured every step: `async/staleness_mean`, `async/staleness_max` and `async/staleness_<j>` (the
fraction of rows j versions old); `pipeline/wait_seconds` (the trainer waiting for rollouts);
`pipeline/trainer_idle_frac` and `pipeline/trainer_busy_seconds` (of this step), `pipeline/rollout_idle_frac` and
`pipeline/rollout_busy_seconds` (of the step k + 1 steps before: the pool's spans come back with the batches
they made); the dashboard draws both per step. `s.pipeline.spans` holds what each pool did when, and
`s.pipeline.timeline_figure()` draws it (written to `<run_dir>/pipeline_timeline.html` when the Session
closes).

Partial rollouts (`rollout.partial`): the pool generates in segments of `rollout.partial_segment` tokens and,
between two, takes the newest weights the driver put in a `WeightMailbox`, so a generation that an update
interrupts continues on the new weights (`Batch.token_policy_version` per token; the row's `policy_version`,
which the bound checks, is its first token's).

A checkpoint (`s.save()`) waits for the generations in flight and stores their batches, so a resumed run
trains on exactly the batches the uninterrupted one would have (`save` / `load` below).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlkit.batch import Batch
from rlkit.cluster import RoleSpec
from rlkit.cluster.futures import LocalFuture, WorkerFuture

POOL = "rollout"
TRAINER = "trainer"


@dataclass
class InFlight:
    """One generation submitted to the rollout pool, not yet trained on."""

    prompts: Batch
    """The prompts it was drawn for (drawn again if the batch turns out too old)."""
    batch: WorkerFuture
    """The rollout `Batch` (with `policy_version`)."""
    report: WorkerFuture
    """Per rank: the pool's call stats and spans up to this generation (`RolloutWorker.pop_report`)."""
    loads: list[WorkerFuture] = field(default_factory=list)
    """Weight pushes submitted just before it (their errors surface when it is taken)."""

    def done(self) -> "InFlight":
        """The same generation with its results fetched (kept when a step fails, and saved by checkpoints)."""
        for load in self.loads:
            load.result()
        return InFlight(self.prompts, LocalFuture(self.batch.result()), LocalFuture(self.report.result()))


class RolloutPipeline:
    """The rollout pool and the queue of generations in flight; `step()` is one pipelined RL step."""

    def __init__(self, session: Any, group: Any):
        self.s = session
        self.group = group
        """The rollout pool's worker group (one role, "rollout")."""
        self.bound = int(session.config.rollout.async_steps)
        """`rollout.async_steps`: the most updates a trained sample may be behind the trainer."""
        self.pool_version: int | None = None
        """Policy version last pushed to the pool (None: nothing pushed yet)."""
        self.in_flight: deque[InFlight] = deque()
        self.spans: list[dict[str, Any]] = []
        """What each pool did: {"pool", "what", "step", "start", "end"} with wall-clock seconds (time.time())."""
        self.mailbox: Any = None
        """Partial rollouts (`rollout.partial`): the `WeightMailbox` the pool reads between segments."""
        self._pending_loads: list[WorkerFuture] = []
        self._step_end: float | None = None  # wall time at which the previous pipelined step ended
        self._windows: deque[tuple[float, float]] = deque()  # wall-clock windows of the recent steps

    @classmethod
    def build(cls, session: Any, model_cfg: Any) -> "RolloutPipeline":
        """The rollout pool of `session` (`rollout.pool_devices` ranks starting from the actor's model)."""
        from rlkit.rollout.pool import RolloutWorker

        devices = int(session.config.rollout.pool_devices)
        per_node = min(devices, session.config.cluster.devices_per_node)
        pool = session.runtime.make_pool(nodes=max(1, devices // per_node), devices_per_node=per_node)
        spec = RoleSpec(RolloutWorker, kwargs=RolloutWorker.kwargs_from_config(model_cfg))
        pipeline = cls(session, session.runtime.make_group({POOL: spec}, pool, name="rollout-pool"))
        if session.config.rollout.partial:
            from rlkit.rollout.pool import WeightMailbox

            if session.backend == "ray":
                import ray

                pipeline.mailbox = ray.remote(WeightMailbox).options(num_cpus=0).remote()
            else:  # one process: a pool call runs whole when submitted, so no push ever lands mid-generation
                pipeline.mailbox = WeightMailbox()
            pipeline.group[POOL].set_mailbox(pipeline.mailbox)
        return pipeline

    # ------------------------------------------------------------------ the pipelined step

    def step(self) -> dict:
        """One RL step: take the oldest generation in flight (submitting them first when none is), prepare and
        learn on it, push the new weights to the pool and submit the next generation. Returns the step's stats."""
        s = self.s
        start, wall_start = time.perf_counter(), time.time()
        self.fill()
        waited = time.perf_counter()
        entry = self._take_fresh()
        batch, reports = entry.batch.result(), entry.report.result()
        waited = time.perf_counter() - waited
        stale = s.policy_version - batch.policy_version  # (B,) updates each row is behind the trainer
        token_stale = None  # partial rollouts: (valid tokens,) updates each token is behind
        if batch.token_policy_version is not None:
            token_stale = (s.policy_version - batch.token_policy_version)[batch.response_mask.bool()]
        self._record_generation(batch, reports)
        t0 = time.time()
        try:
            batch = s.prepare(batch)
        except BaseException:  # kept for the next step (no prompt lost), its spans already recorded
            self.in_flight.appendleft(InFlight(entry.prompts, entry.batch,
                                               LocalFuture([{**r, "spans": []} for r in reports])))
            s.monitor.current = {}
            raise
        self._span(TRAINER, "prepare", t0, time.time())
        with s._holding_interrupts(f"learn of step {s.steps_done + 1}"):
            t0 = time.time()
            s.learn(batch)
            self._span(TRAINER, "learn", t0, time.time())
            s.steps_done += 1
            s.last_batch = batch
            self.fill()  # push the new weights and submit the next generation before the bookkeeping
            s.monitor.current.update(self._step_stats(stale, waited, wall_start))
            if token_stale is not None and token_stale.numel():
                s.monitor.current["async/token_staleness_mean"] = float(token_stale.float().mean())
            return s.monitor.end_step(s.steps_done, time.perf_counter() - start, batch)

    def fill(self) -> None:
        """Submit generations until `bound + 1` are in flight, pushing the trainer's weights first when the pool's
        are behind them (the first call, after every update, after a resume)."""
        while len(self.in_flight) < self.bound + 1:
            self.submit(self.s.next_prompts())

    def submit(self, prompts: Batch) -> None:
        """Queue a generation of `prompts` on the pool, behind those in flight."""
        from rlkit.session_support import sampling_params

        if self.pool_version != self.s.policy_version:
            self.push_weights()
        prompts = prompts.replace(group_id=torch.arange(len(prompts)))
        handle = self.group[POOL]
        entry = InFlight(prompts, handle.generate.submit(prompts, sampling_params(self.s.config.rollout)),
                         handle.pop_report.submit(), self._pending_loads)
        self._pending_loads = []
        self.in_flight.append(entry)

    def push_weights(self) -> None:
        """Send the actor's current weights to every pool rank as version `s.policy_version` (queued behind the
        generations already submitted: they finish on the weights they started with)."""
        # Gathered from the trainer's shards on its rank 0, and read by the pool from Ray's object store: the
        # driver does not wait for it or hold a copy (a 540 MB state dict through the driver cost ~3 s a step).
        state = self.s.roles["actor"].full_state_dict.submit()
        if self.mailbox is not None:  # partial rollouts: the generation running now takes them at its next segment
            put = self.mailbox.put
            (put.remote if hasattr(put, "remote") else put)(self.s.policy_version, state.forward(0))
        self._pending_loads.append(self.group[POOL].load_weights.submit(state.forward(0), self.s.policy_version))
        self.pool_version = self.s.policy_version

    def _take_fresh(self) -> InFlight:
        """The oldest generation in flight, within the bound, taken off the queue once its results are here (an
        interrupt while waiting leaves it queued). One that is older (possible only after a learn outside the
        pipeline) is dropped with everything queued behind it, and their prompts are drawn again on the
        current weights, in the same order."""
        for attempt in range(2):
            self.in_flight[0] = self.in_flight[0].done()  # waits for the pool; a failed push surfaces here
            version = int(self.in_flight[0].batch.result().policy_version.min())
            if self.s.policy_version - version <= self.bound:
                return self.in_flight.popleft()
            if attempt:  # drawn after a push of the current weights: the pool did not take them
                raise RuntimeError(f"rollout pool: a batch drawn after the push of policy version "
                                   f"{self.s.policy_version} records version {version}")
            redraw = [entry.prompts for entry in self.in_flight]
            for entry in self.in_flight:
                entry.done()  # a pool call cannot be cancelled: let them finish; their rows are not used
            self.in_flight.clear()
            for prompts in redraw:
                self.submit(prompts)

    # ------------------------------------------------------------------ measurements

    def _span(self, pool: str, what: str, start: float, end: float) -> None:
        self.spans.append({"pool": pool, "what": what, "step": self.s.steps_done + 1, "start": start, "end": end})

    def _record_generation(self, batch: Batch, reports: list[dict]) -> None:
        from rlkit.session_support import reduce_rank_stats

        seconds = 0.0
        for rank, report in enumerate(reports):
            for what, start, end in report["spans"]:
                if rank == 0:
                    self.spans.append({"pool": POOL, "what": what, "step": self.s.steps_done + 1,
                                       "start": start, "end": end})
                if what == "generate":
                    seconds = max(seconds, end - start)
        calls = [c for r in reports for c in r["stats"]]
        stats = reduce_rank_stats([c for c in calls if any(k.startswith("rollout/generate/") for k in c)])
        self.s.monitor.record("generate", seconds, {"generated_tokens": float(batch.response_mask.sum()),
                                                    "batch": batch, "stats": stats},
                              role_stats=lambda: {POOL: [r["stats"] for r in reports]})

    def _step_stats(self, stale: torch.Tensor, waited: float, wall_start: float) -> dict[str, float]:
        out = {"async/staleness_mean": float(stale.float().mean()), "async/staleness_max": float(stale.max()),
               "pipeline/wait_seconds": waited}
        for j in range(self.bound + 1):
            out[f"async/staleness_{j}"] = float((stale == j).float().mean())
        now = time.time()
        window = (self._step_end if self._step_end is not None else wall_start, now)
        out["pipeline/trainer_idle_frac"] = idle_fraction(self.spans, TRAINER, *window)
        out["pipeline/trainer_busy_seconds"] = (1 - out["pipeline/trainer_idle_frac"]) * (window[1] - window[0])
        self._windows.append(window)
        self._step_end = now
        # The pool's spans come back with the batches they made, and a batch is taken bound + 1 steps after it
        # was submitted: the pool's record of a step's window is complete that many steps later.
        if len(self._windows) > self.bound + 1:
            start, end = self._windows.popleft()
            out["pipeline/rollout_idle_frac"] = idle_fraction(self.spans, POOL, start, end)
            out["pipeline/rollout_busy_seconds"] = (1 - out["pipeline/rollout_idle_frac"]) * (end - start)
        return out

    def idle_fractions(self) -> dict[str, float]:
        """Each pool's idle fraction over every pipelined step so far (from the first span to the last)."""
        if not self.spans:
            return {}
        start, end = min(x["start"] for x in self.spans), max(x["end"] for x in self.spans)
        return {pool: idle_fraction(self.spans, pool, start, end) for pool in (POOL, TRAINER)}

    def timeline_figure(self, last_steps: int | None = None):
        """A plotly figure: one row per pool, a bar per span (generate, load weights, prepare, learn)."""
        from rlkit.monitor.timeline import timeline_figure

        spans = self.spans
        if last_steps is not None and spans:
            first = max(x["step"] for x in spans) - last_steps + 1
            spans = [x for x in spans if x["step"] >= first]
        return timeline_figure(spans)

    def write_timeline(self, path: str | Path | None = None) -> Path | None:
        """The timeline figure as HTML (default `<run_dir>/pipeline_timeline.html`, which `Session.close` writes);
        None when no pipelined step ran."""
        if not self.spans:
            return None
        path = Path(path) if path is not None else Path(self.s.run_dir) / "pipeline_timeline.html"
        self.timeline_figure().write_html(str(path), include_plotlyjs=True, full_html=True)
        return path

    # ------------------------------------------------------------------ checkpoints

    def save(self, folder: Path) -> None:
        """Wait for the generations in flight and write them to `folder` (batches in queue order, the pool's
        sampler state): a resume trains on the same batches, drawing no prompt twice and losing none."""
        folder.mkdir(parents=True, exist_ok=True)
        done = [entry.done() for entry in self.in_flight]
        self.in_flight = deque(done)
        for i, entry in enumerate(done):
            entry.prompts.save(folder / f"prompts-{i}.pt")
            entry.batch.result().save(folder / f"batch-{i}.pt")
        torch.save({"count": len(done), "reports": [e.report.result() for e in done],
                    "sampler": self.group[POOL].sampler_state()[0]}, folder / "pipeline.pt")

    def load(self, folder: Path) -> None:
        """Queue the generations a checkpoint's `save` wrote, and restore the pool's sampler."""
        meta = torch.load(folder / "pipeline.pt", weights_only=False)
        self.in_flight = deque(
            InFlight(Batch.load(folder / f"prompts-{i}.pt"), LocalFuture(Batch.load(folder / f"batch-{i}.pt")),
                     LocalFuture(meta["reports"][i]))
            for i in range(meta["count"]))
        self.group[POOL].load_sampler_state(meta["sampler"])


def idle_fraction(spans: list[dict[str, Any]], pool: str, start: float, end: float) -> float:
    """1 - (time `pool` was busy within [start, end]) / (end - start); overlapping spans count once."""
    if end <= start:
        return 0.0
    pieces = sorted((max(x["start"], start), min(x["end"], end)) for x in spans if x["pool"] == pool)
    busy, reach = 0.0, start
    for a, b in pieces:
        a = max(a, reach)
        if b > a:
            busy += b - a
            reach = b
    return max(0.0, 1.0 - busy / (end - start))


__all__ = ["RolloutPipeline", "InFlight", "idle_fraction"]
