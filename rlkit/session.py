"""`rlkit.Session`: the notebook's handle on a run, and the stages of an RL step.

```python
s = rlkit.Session(rlkit.Config.preset("arithmetic-tiny", algo="grpo"))
batch = s.generate()          # rollouts from the current policy
batch = s.prepare(batch)      # scores, old/ref log-probs, values, advantages
stats = s.learn(batch)        # critic + actor update (the hf engine needs no weight copy)
s.train(steps=20)             # the three stages in a loop, with a progress bar and live plots
s.evaluate()                  # greedy accuracy and pass@k on the eval split
s.save()                      # run_dir/checkpoints/step-000020: resume with rlkit.Session.resume(run_dir)
s.close()                     # or: with rlkit.Session(cfg) as s: ...
```

The Session owns the cluster (`ClusterRuntime`: start/join Ray, free every process
on `close()`), one colocated worker group (actor + rollout engine, reference,
critic, reward model: one process per device holding each role as a separate
object), the prompt data, the algorithm and the monitor. Every stage is callable
on its own and re-runnable on the same batch; the algorithm (a file in
`rlkit/algos/`, or an object you pass) composes the primitives below.
Creating a Session closes the previous live one (reusing its Ray cluster when the
settings match), so re-running a cell never leaks worker processes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from rlkit.algos.base import get_algorithm, spec_of, spec_problems
from rlkit.batch import Batch
from rlkit.cluster import RoleSpec
from rlkit.cluster.runtime import ClusterRuntime
from rlkit.config import Config
from rlkit.nonfinite import check_rewards, check_updates
from rlkit.session_support import (COMPUTABLE_FIELDS, check_batch_fits, placement_of, reduce_rank_stats,
                                   require_fields, run_directory, sampling_params)


class Session:
    """Owns the cluster, the worker group, the data, the algorithm and the monitor of one run."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        algorithm: Any = None,
        address: str | None = None,
        num_cpus: int | None = None,
        backend: str | None = None,
        reward_fn: Any = None,
        cost_fn: Any = None,
        eval_fn: Any = None,
        env: Any = None,
        _resume: Any = None,
    ):
        """
        config: the run's `Config`. None gives a cluster-only Session (Ray started or joined, no
            model, data or workers): make your own groups with `s.runtime.make_group(...)`.
        algorithm: an algorithm object (see `rlkit.algos.base.Algorithm`) instead of `config.algo.name`.
        address: join a running Ray cluster ("auto" or an address) instead of starting one.
        backend: "ray" (default) or "local" (one process, `breakpoint()` works in worker code).
        reward_fn / cost_fn: reward functions replacing the task's (or `reward.path`'s): rlkit's rule
            `(response_text, ground_truth, eos_seen)` or verl's `compute_score(data_source, solution_str,
            ground_truth, extra_info)`, sync or async, returning a number or a dict with "score" whose
            other keys are logged as `reward/<key>` (rlkit.rewards; run on `reward.num_workers` threads).
        eval_fn: the rule `evaluate()` scores with (default: the reward rule, or the task's with a reward model).
        env: an environment for multi-turn rollouts (`rlkit.envs.Env`: a class, or any zero-argument callable
            returning a fresh one per episode), instead of the built-in `env.name`; its rewards score the
            episodes (`rlkit.envs.rollout`).
        (`Session.resume` passes `_resume`, the checkpoint to restore: use that classmethod.)
        """
        self._resume_plan = _resume
        self._holding = False  # inside a block that holds Ctrl-C back (rlkit.interrupts)
        self._inconsistent: str | None = None  # why this Session can no longer continue safely
        build_workers = config is not None
        self._given_fns = {"reward_fn": reward_fn, "cost_fn": cost_fn, "eval_fn": eval_fn, "algorithm": algorithm,
                           "env": env}
        config = Config() if config is None else config
        config.validate()  # configs are mutable: re-check what a notebook may have edited
        cluster = config.cluster
        self.config = config
        """The run's `rlkit.Config`."""
        self.backend: str = backend or cluster.backend
        """"ray" or "local"."""
        address = address if address is not None else cluster.address
        num_cpus = num_cpus if num_cpus is not None else cluster.num_cpus
        if build_workers:  # before Ray starts: an unwritable or already used folder fails at once, fields named
            self.run_dir = run_directory(config, resume=_resume is not None and not getattr(_resume, "fork", False))
            """Where this run's stats, plots, samples and checkpoints are written."""
        self.runtime = ClusterRuntime.acquire(self.backend, address, num_cpus, cluster=cluster)
        """The cluster lifecycle: Ray start/join/shutdown, and the pools and worker groups made with its
        `make_pool` / `make_group` (closed with it)."""
        self.group = None
        """The colocated worker group (roles: actor, and ref / critic / reward when the algorithm needs them)."""
        if not build_workers:
            return
        try:
            self._build(algorithm, reward_fn, cost_fn, eval_fn, env)
        except BaseException:
            self.close()  # never leave half-built worker processes behind
            raise

    # ------------------------------------------------------------------ build

    def _build(self, algorithm, reward_fn, cost_fn, eval_fn=None, env=None) -> None:
        from rlkit.monitor.session_monitor import SessionMonitor
        from rlkit.rollout.hybrid import HybridActor
        from rlkit.data.stream import PromptStream, load_driver_tokenizer, resolve_model, task_rules
        from rlkit.workers import CriticWorker, ReferenceWorker, RewardModelWorker

        cfg = self.config
        self.algo = get_algorithm(algorithm if algorithm is not None else cfg.algo.name, cfg)
        """The algorithm object: its `spec` and `generate` / `prepare` / `actor_loss` / `after_learn` hooks."""
        self.spec = spec_of(self.algo)
        """What the algorithm needs (`rlkit.algos.base.AlgorithmSpec`): roles, group size, KL placement."""
        if algorithm is not None:  # a passed object's spec was not seen by Config.validate()
            problems = spec_problems(self.spec, cfg, getattr(self.algo, "name", type(self.algo).__name__))
            if problems:
                from rlkit.config import ConfigError

                raise ConfigError("\n".join(problems))
        self.model_path = resolve_model(cfg, self.run_dir)
        """The policy's starting weights: `model.path`, or a tiny preset built under the run directory."""
        self.tokenizer = load_driver_tokenizer(self.model_path, cfg.model.tokenizer_path)
        self.prompts = PromptStream(cfg, self.tokenizer)
        """Train/eval prompt splits and the cursor over the training prompts."""
        from rlkit.envs.rollout import env_rollout_for

        self.env_rollout = env_rollout_for(cfg, env, self.tokenizer)
        """The multi-turn rollout (`rlkit.envs.EnvRollout`) when an environment is given (`env=` or `env.name`),
        else None: `rollout` then samples one response per prompt."""
        rules = task_rules(cfg)
        self.reward_fn = reward_fn or rules[0]
        self.eval_fn = eval_fn or (rules[0] if cfg.model.reward_model_path else self.reward_fn)
        """The rule `evaluate` scores with: `eval_fn`, else the reward rule, else (a reward model trains the
        policy) the task's own rule."""
        self.cost_fn = cost_fn or rules[1]
        if self.spec.needs_costs and self.cost_fn is None and not cfg.model.cost_model_path:
            raise ValueError(f"algo.name = {self.algo.name!r} needs costs: set model.cost_model_path, pass "
                             f"Session(cost_fn=...), or use a data.source whose task has a cost rule "
                             f"(data.source = {cfg.data.source!r} has none)")

        model_cfg = cfg.override({"model.path": str(self.model_path)})
        specs = {"actor": RoleSpec(HybridActor, kwargs=HybridActor.kwargs_from_config(model_cfg))}
        if self.spec.needs_reference and self._reference_role == "ref":
            specs["ref"] = RoleSpec(ReferenceWorker, kwargs=ReferenceWorker.kwargs_from_config(model_cfg))
        if self.spec.needs_critic:
            specs["critic"] = RoleSpec(CriticWorker, kwargs=CriticWorker.kwargs_from_config(model_cfg))
        if cfg.model.reward_model_path:
            specs["reward"] = RoleSpec(RewardModelWorker, kwargs=RewardModelWorker.kwargs_from_config(model_cfg))
        if cfg.model.cost_model_path:
            specs["cost"] = RoleSpec(RewardModelWorker, kwargs=RewardModelWorker.kwargs_from_config(model_cfg, "costs"))
        self.placement = placement_of(cfg, list(specs), self.backend)
        """Which roles share devices: a list of (role names, device count), one worker group each."""
        self.groups = []
        """One worker group per entry of `placement` (roles in one group share processes)."""
        self.roles = {}
        """role name -> its handle (`s.roles["actor"].compute_logprobs(batch)`)."""
        self._group_of = {}
        for i, (names, devices) in enumerate(self.placement):
            per_node = min(devices, cfg.cluster.devices_per_node)
            pool = self.runtime.make_pool(nodes=max(1, devices // per_node), devices_per_node=per_node)
            group = self.runtime.make_group({name: specs[name] for name in names}, pool, name=f"rl{i}")
            self.groups.append(group)
            self.roles.update({name: group[name] for name in names})
            self._group_of.update({name: group for name in names})
        self.group = self.groups[0]
        """The actor's worker group."""
        self.steps_done = 0
        """RL steps (generate + prepare + learn) completed."""
        self.policy_version = 0
        """Actor updates applied (every `learn`): the version a sample drawn now records (`Batch.policy_version`)."""
        self.pipeline = None
        """With `rollout.async_steps >= 1`: the `rlkit.pipeline.RolloutPipeline` that `step` and `train` run."""
        if cfg.rollout.async_steps:
            from rlkit.pipeline import RolloutPipeline

            self.pipeline = RolloutPipeline.build(self, model_cfg)
        plan = self._resume_plan
        self.monitor = SessionMonitor(cfg, self.run_dir, roles=list(specs), pop_role_stats=self._pop_role_stats,
                                      resume=plan)
        """Per-stage stats, the run directory's stats.jsonl, the dashboard and W&B."""
        if plan is not None:
            from rlkit.run_checkpoint import restore_session

            restore_session(self, plan)

    def _pop_role_stats(self) -> dict:
        # One broadcast per role: every rank's per-call measurements since the last stage.
        return {role: handle.pop_stats() for role, handle in self.roles.items()}

    # ------------------------------------------------------------------ primitives (used by algorithms)

    @property
    def cfg(self) -> Config:
        return self.config

    def next_prompts(self) -> Batch:
        """The next `rollout.prompts_per_step` training prompts (reshuffled every pass over the data)."""
        return self.prompts.next_train()

    def rollout(self, prompts: Batch, *, n: int | None = None, greedy: bool = False) -> Batch:
        """`n` sampled responses per prompt (default `rollout.n`), or one greedy response per prompt.

        Rows keep their prompt's `group_id` = the prompt's row index in `prompts`, and carry the policy version
        that drew them (`policy_version`: updates applied so far)."""
        params = sampling_params(self.config.rollout, n=n, greedy=greedy)
        prompts = prompts.replace(group_id=torch.arange(len(prompts)))
        if self.env_rollout is not None:  # episodes with the environment, the engine called once per turn
            out = self.env_rollout.rollout(self.roles["actor"].generate, prompts, params)
            if not greedy:  # the step's env/* stats: the sampled episodes, not a greedy baseline's or eval's
                self.monitor.current.update(self.env_rollout.last_stats)
        else:
            out = self.roles["actor"].generate(prompts, params)
        return out.replace(policy_version=torch.full((len(out),), self.policy_version, dtype=torch.long))

    def score(self, batch: Batch) -> Batch:
        """`scores` (B,) from the reward model or rule, and `costs` (B,) when a cost model/rule exists."""
        return self.compute(batch, "scores")

    def compute(self, batch: Batch, *fields: str) -> Batch:
        """`batch` with `fields` computed: "scores" (and `costs` when a cost model/rule exists), "old_logprobs",
        "ref_logprobs", "values". The worker calls are submitted together, the rule rewards run on the driver
        meanwhile, and all are joined: roles on different devices (`cluster.placement = "split"`) run side
        by side, so the stage takes about the longest call instead of their sum. A reward rule returning a
        dict adds the batch means of its other numeric keys to the step's stats as `reward/<key>`."""
        from rlkit.rewards import extras_stats
        from rlkit.workers.reward_model import rule_scores, rule_scores_and_extras

        unknown = [f for f in fields if f not in COMPUTABLE_FIELDS]
        if unknown:
            raise ValueError(f"Session.compute: cannot compute {', '.join(map(repr, unknown))}; "
                             f"allowed: {', '.join(COMPUTABLE_FIELDS)}")
        pending = {}  # Batch field -> future of a Batch holding it
        if "old_logprobs" in fields and not self.old_logprobs_skippable(batch):
            pending["old_logprobs"] = self._role("actor", "old_logprobs").compute_logprobs.submit(batch, "old_logprobs")
        if "ref_logprobs" in fields:
            pending["ref_logprobs"] = self._role(self._reference_role, "ref_logprobs").compute_logprobs.submit(
                batch, "ref_logprobs")
        if "values" in fields:
            pending["values"] = self._role("critic", "values").compute_values.submit(batch)
        if "scores" in fields:
            if "reward" in self.roles:
                pending["scores"] = self.roles["reward"].score.submit(batch)
            if "cost" in self.roles:
                pending["costs"] = self.roles["cost"].score.submit(batch)
        computed = {}
        if "scores" in fields:  # driver-side rules overlap with the worker calls in flight
            where = f"step {self.steps_done + 1}"  # reward errors name the step, the row and its prompt
            if batch.turn_rewards is not None and "reward" not in self.roles:  # episodes: the environment's rewards
                computed["scores"] = batch.turn_rewards.sum(-1)
            elif "reward" not in self.roles:
                computed["scores"], extras = rule_scores_and_extras(batch, self.reward_fn, self.tokenizer,
                                                                    reward=self.config.reward, where=where)
                if extras:  # into the step's stats line (stats.jsonl)
                    self.monitor.current.update(extras_stats(extras))
            if "cost" not in self.roles and self.cost_fn is not None:
                computed["costs"] = rule_scores(batch, self.cost_fn, self.tokenizer, reward=self.config.reward,
                                                where=where)
        for name, future in pending.items():
            computed[name] = getattr(future.result(), name)
        check_rewards(computed, step=self.steps_done + 1, mode=self.config.actor.on_nonfinite)  # NaN/inf rows
        return batch.replace(**computed)

    @property
    def _reference_role(self) -> str:
        """Who computes `ref_logprobs`: the reference worker, or (LoRA) the actor with its adapters disabled."""
        return "actor" if self.config.actor.lora_rank else "ref"

    def _role(self, role: str, field: str):
        if role not in self.roles:
            raise ValueError(f"Session.compute: {field} need the {role!r} role, which this session did not build "
                             f"(algorithm {self.algo.name!r}: spec {self.spec})")
        return self.roles[role]

    def compute_old_logprobs(self, batch: Batch, *, force: bool = False) -> Batch:
        """`old_logprobs` (B, T) under the current policy; left out (None) when `actor.skip_old_logprobs`
        holds for this batch (`old_logprobs_skippable`) unless `force` (the caller reads them itself)."""
        if not force and self.old_logprobs_skippable(batch):
            return batch
        return batch.replace(old_logprobs=self.roles["actor"].compute_logprobs(batch, "old_logprobs").old_logprobs)

    def old_logprobs_skippable(self, batch: Batch) -> bool:
        """True when `actor.skip_old_logprobs` is on, `batch` gets exactly one optimizer step (one mini-batch,
        one epoch) and the algorithm does not read them itself (a KL in the reward does): then the policy loss
        takes its own detached log-probs as the old ones."""
        a = self.config.actor
        return (a.skip_old_logprobs and a.ppo_epochs == 1 and len(batch) <= a.mini_batch_size
                and not self.spec.reads_old_logprobs_in_prepare)

    def compute_ref_logprobs(self, batch: Batch) -> Batch:
        return self.compute(batch, "ref_logprobs")

    def compute_values(self, batch: Batch) -> Batch:
        return self.compute(batch, "values")

    def update_actor(self, batch: Batch) -> dict:
        """The policy update on `batch`; metrics are all-reduced on the workers, and the per-rank
        measurements (time, memory, throughput) are reduced by `reduce_rank_stats`."""
        ordered = self._epoch_order(batch, self._group_of["actor"].world_size,
                                    balance=self.config.actor.max_tokens_per_micro_batch > 0)
        return reduce_rank_stats(self.roles["actor"].update(ordered, self.algo.actor_loss, epochs=1))

    def update_critic(self, batch: Batch) -> dict:
        """The critic update on the same mini-batches as the actor's (see `update_actor`)."""
        ordered = self._epoch_order(batch, self._group_of["critic"].world_size,
                                    balance=self.config.critic.max_tokens_per_micro_batch > 0)
        return reduce_rank_stats(self.roles["critic"].update(ordered, epochs=1))

    def _epoch_order(self, batch: Batch, world_size: int, *, balance: bool = False) -> Batch:
        """`actor.ppo_epochs` passes over `batch` laid end to end, in the row order the workers' mini-batches
        take (see `interleave_minibatches`): with several epochs every pass is a fresh permutation, seeded by
        the run's seed, the step and the epoch (so mini-batches differ between epochs, as in cleanrl).
        `balance` (token-budget micro-batches on several ranks): each rank's share of a mini-batch holds
        about the same tokens (`balance_minibatch_tokens`)."""
        from rlkit.workers import interleave_minibatches
        from rlkit.workers.batching import balance_minibatch_tokens

        epochs, mini = self.config.actor.ppo_epochs, self.config.actor.mini_batch_size

        def lay_out(rows: Batch) -> Batch:
            if balance and world_size > 1:
                rows = balance_minibatch_tokens(rows, world_size, mini)
            return interleave_minibatches(rows, world_size, mini)

        if epochs == 1:
            return lay_out(batch)
        passes = []
        for epoch in range(epochs):
            gen = torch.Generator().manual_seed(hash((self.config.seed, self.steps_done, epoch)) % 2**63)
            order = torch.randperm(len(batch), generator=gen)
            passes.append(lay_out(batch.select(order)))
        return Batch.concat(passes)

    def sync_weights(self) -> dict:
        """Bring every rollout engine up to date with the actor's weights; `time/sync`, `weight_sync/bytes` (what
        one engine received, max over ranks) and `weight_sync/seconds` in the step's stats and the dashboard.
        `learn` ends with it, so the next `generate` starts on current weights and makes no sync of its own
        (`rollout/fallback_sync` = 0 in its stats). The hf engine generates on the actor's own parameters: its
        sync moves 0 bytes. (`sync/*` keys are the weight preparation inside `generate`, see `memory_stats`.)"""
        with self.monitor.stage("sync") as rec:
            per_rank = self.roles["actor"].sync_weights()
            rec.update(stats={f"weight_sync/{k}": max(float(r[k]) for r in per_rank)
                              for k in ("seconds", "bytes") if all(k in r for r in per_rank)})
        return self.monitor.last_stage_stats("sync")

    # ------------------------------------------------------------------ the stages (notebook cells)

    def generate(self, prompts: Batch | list[str] | None = None) -> Batch:
        """Stage 1: rollouts from the current policy (the next training prompts when none are given)."""
        self._check_usable("generate")
        if prompts is None:
            prompts = self.next_prompts()
        elif not isinstance(prompts, Batch):
            prompts = self.prompts.encode(list(prompts))
        with self.monitor.stage("generate") as rec:
            hook = getattr(self.algo, "generate", None)
            batch = hook(self, prompts) if hook is not None else self.rollout(prompts)
            rec.update(generated_tokens=float(batch.response_mask.sum()), batch=batch)
        return batch

    def prepare(self, batch: Batch) -> Batch:
        """Stage 2: whatever the algorithm needs before learning (scores, log-probs, values, advantages)."""
        self._check_usable("prepare")
        require_fields(batch, ("response_ids", "response_mask"), "prepare", "run s.generate() first")
        self._check_batch_fits(batch, "prepare")
        with self.monitor.stage("prepare") as rec:
            batch = self.algo.prepare(self, batch)
            rec.update(tokens=float(batch.num_tokens()), batch=batch)
        return batch

    def learn(self, batch: Batch) -> dict:
        """Stage 3: critic then actor update (mini-batches x `actor.ppo_epochs`), then the weight sync to the
        rollout engines (`sync_weights`); returns the learn and sync stats. Ctrl-C waits for it to finish
        (`rlkit.interrupts`): an update is applied whole or not at all."""
        self._check_usable("learn")
        skip = ("old_logprobs",) if self.old_logprobs_skippable(batch) else ()
        require_fields(batch, tuple(f for f in self.spec.learn_fields if f not in skip), "learn", "run s.prepare(batch) first")
        self._check_batch_fits(batch, "learn")
        with self._holding_interrupts(f"learn (step {self.steps_done + 1})"):
            return self._learn(batch)

    def _learn(self, batch: Batch) -> dict:
        stats: dict[str, float] = {}
        with self.monitor.stage("learn") as rec:
            if self.spec.needs_critic:
                stats.update(self.update_critic(batch))
            stats.update(self.update_actor(batch))
            self.policy_version += 1
            hook = getattr(self.algo, "after_learn", None)
            if hook is not None:
                stats.update(hook(self, batch, stats))
            rec.update(tokens=float(batch.num_tokens()), stats=stats)
        learned = self.monitor.last_stage_stats("learn")
        check_updates(learned, step=self.steps_done + 1, mode=self.config.actor.on_nonfinite)  # skipped steps
        return {**learned, **self.sync_weights()}

    def step(self) -> dict:
        """One RL step: generate, prepare, learn. Returns the step's stats (also logged). With
        `rollout.async_steps >= 1` the step of the pipeline instead (`rlkit.pipeline`: the batch comes from the
        rollout pool, generated while earlier steps learned).

        A step that fails or is interrupted before learning consumes no prompts (the stream's cursor goes
        back); once learning starts, Ctrl-C waits for the update and the step's bookkeeping to finish, so
        the step is counted with its update (`rlkit.interrupts`)."""
        self._check_usable("step")
        if self.pipeline is not None:  # rollout.async_steps >= 1: generation runs ahead on the rollout pool
            return self.pipeline.step()
        start = time.perf_counter()
        cursor = self.prompts.state_dict()
        try:
            batch = self.prepare(self.generate())
        except BaseException:
            self.prompts.load_state_dict(cursor)
            self.monitor.current = {}  # the failed step's partial stats never reach the next step's line
            raise
        with self._holding_interrupts(f"learn of step {self.steps_done + 1}"):
            self.learn(batch)
            self.steps_done += 1
            self.last_batch = batch
            """The prepared batch of the latest step (inspect it, or replay `s.learn(s.last_batch)`)."""
            return self.monitor.end_step(self.steps_done, time.perf_counter() - start, batch)

    @contextmanager
    def _holding_interrupts(self, what: str) -> Iterator[None]:
        if self._holding:  # learn inside step: the outer block holds them
            yield
            return
        from rlkit.interrupts import hold_interrupts

        self._holding = True
        try:
            with hold_interrupts(what, self._mark_inconsistent):
                yield
        finally:
            self._holding = False

    def _mark_inconsistent(self, reason: str) -> None:
        self._inconsistent = reason

    def _check_usable(self, stage: str) -> None:
        if self._inconsistent is not None:
            raise RuntimeError(
                f"Session.{stage}: this Session cannot continue safely ({self._inconsistent}). Resume the run "
                f"from its latest checkpoint: rlkit.Session.resume({str(getattr(self, 'run_dir', '<run_dir>'))!r})")

    def train(self, steps: int, *, eval_every: int | None = None) -> list[dict]:
        """`steps` RL steps with a progress bar and live plots; evaluates every `eval_every` steps."""
        from tqdm.auto import tqdm

        eval_every = self.config.logging.eval_every if eval_every is None else eval_every
        save_every = self.config.logging.save_every
        history = []
        for _ in tqdm(range(steps), desc=f"{self.algo.name} steps", leave=False):
            stats = self.step()
            if eval_every and self.steps_done % eval_every == 0:
                stats.update(self.evaluate())
            if save_every and self.steps_done % save_every == 0:
                self.save()
            history.append(stats)
        return history

    # ------------------------------------------------------------------ checkpoints: save, resume, fork, export

    def save(self, path: str | Path | None = None) -> Path:
        """Checkpoint the whole run: `<run_dir>/checkpoints/step-<steps_done>/` (or `path`) holds every trained
        role's shards with its optimizer and lr schedule, the algorithm's state, the prompt stream's cursor, the
        RNGs, the step, the config and the monitor's history; `checkpoints/latest` names it once it is complete
        (the write is atomic: a killed save leaves the previous checkpoint in place). `logging.keep_last`
        prunes older ones. Returns the folder. See `rlkit.run_checkpoint`."""
        from rlkit.run_checkpoint import save_session

        return save_session(self, path)

    @classmethod
    def resume(cls, source: str | Path, overrides: dict | None = None, *, fork: bool = False,
               **session_kwargs: Any) -> "Session":
        """A Session continuing from a checkpoint: `source` is a run directory (its latest checkpoint) or a
        `checkpoints/step-NNNNNN` folder. The next step equals the step the saved run would have taken.

        overrides: config changes (`{"algo.clip_high": 0.28}`); with `fork=True` the run continues in a new
            run directory (`logging.run_name` in `overrides`, else `<parent>-fork<step>`) whose `run.json`
            records the parent run and step, and the parent is left as it was.
        session_kwargs: what `Session(...)` takes besides the config (`reward_fn=`, `backend=` ...): functions
            are not saved, so pass the same ones again."""
        from rlkit.run_checkpoint import plan_resume

        cfg, plan = plan_resume(source, overrides, fork=fork)
        return cls(cfg, _resume=plan, **session_kwargs)

    def fork(self, overrides: dict | None = None, **session_kwargs: Any) -> "Session":
        """Save this run at its current step, close it, and return a new run forked from that checkpoint with
        `overrides` (see `resume`): "what if I had changed the clip at step 120" in one cell. The reward, cost
        and eval functions and the algorithm object this Session was given carry over unless `session_kwargs`
        replace them."""
        checkpoint = self.save()
        kwargs = {**self._given_fns, "backend": self.backend, **session_kwargs}
        self.close()
        return type(self).resume(checkpoint, overrides, fork=True, **kwargs)

    def export(self, path: str | Path) -> Path:
        """Write the current policy as a plain Hugging Face folder (weights, config, tokenizer and its chat
        template) that `AutoModelForCausalLM.from_pretrained` and vLLM load. Returns the folder."""
        path = Path(path).expanduser().resolve()
        return Path(self.roles["actor"].save_pretrained(str(path)))

    def evaluate(self, *, num_prompts: int | None = None, k: int = 0) -> dict:
        """Greedy accuracy and mean reward on the eval split (and pass@k with k samples per prompt when k > 0).

        Scored with `self.eval_fn`: `Session(eval_fn=...)` when given, else the rule that trains the policy
        (`reward_fn`, `reward.path`, or the task's), else (a reward model trains it) the task's own rule. With an
        environment, greedy episodes scored by their summed rewards. A sample counts as correct when its score
        is above 0.5 (rules that return 1 or 0). Returns {"eval/accuracy", "eval/reward"} (and "eval/pass@k");
        see `rlkit.evaluation`."""
        from rlkit.evaluation import evaluate_session

        return evaluate_session(self, num_prompts=num_prompts, k=k)

    def _eval_scores(self, batch: Batch, where: str) -> torch.Tensor:
        """(B,) what `evaluate` counts: an episode's summed environment rewards, else the eval rule's score."""
        from rlkit.workers.reward_model import rule_scores

        if batch.turn_rewards is not None:
            return batch.turn_rewards.sum(-1)
        return rule_scores(batch, self.eval_fn, self.tokenizer, reward=self.config.reward, where=where)

    # ------------------------------------------------------------------ lifecycle

    @property
    def closed(self) -> bool:
        """True once `close()` ran, or once a newer Session replaced this one."""
        return self.runtime.closed

    def close(self) -> None:
        """Stop every worker process of this Session, and the Ray cluster if the Session started it; idempotent.
        The processes are freed even when writing dashboard.html or finishing W&B fails (that error follows)."""
        monitor, pipeline = getattr(self, "monitor", None), getattr(self, "pipeline", None)
        try:
            if pipeline is not None and not self.closed:
                pipeline.write_timeline()
            if monitor is not None:
                monitor.close()
        finally:
            self.runtime.close(reason="this rlkit.Session was closed with close(): create a new rlkit.Session "
                                      "(rlkit.Session.resume(run_dir) continues a saved run)")

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ notebook display and batch checks

    @property
    def dashboard(self):
        """The live dashboard (`s.monitor.dashboard`): put `s.dashboard` (or `s`) last in a cell to show it."""
        return self.monitor.dashboard

    def _ipython_display_(self) -> None:
        # Jupyter shows a Session as its one-line summary and its live dashboard, which then
        # updates in place while later cells run stages.
        print(repr(self))
        monitor = getattr(self, "monitor", None)
        if monitor is not None:
            monitor.dashboard.show()

    @property
    def vocab_size(self) -> int:
        """Rows of the policy's token embedding: every token id of a batch must be below it."""
        if getattr(self, "_vocab_size", None) is None:
            from transformers import AutoConfig

            try:
                model_cfg = AutoConfig.from_pretrained(
                    str(self.model_path), trust_remote_code=self.config.model.trust_remote_code)
                self._vocab_size = int(model_cfg.get_text_config().vocab_size)
            except (OSError, ValueError, AttributeError, TypeError):  # no readable config: the tokenizer's size
                self._vocab_size = len(self.tokenizer)
        return self._vocab_size

    def _check_batch_fits(self, batch: Batch, stage: str) -> None:
        # A batch saved by another run (Batch.load) must fail here with the mismatch named,
        # not as an index error deep inside a worker's embedding lookup.
        budget = self.config.env.max_tokens if self.env_rollout is not None else self.config.rollout.max_new_tokens
        check_batch_fits(batch, stage, vocab_size=self.vocab_size, max_new_tokens=budget)

    def __repr__(self) -> str:
        algo = getattr(getattr(self, "algo", None), "name", None)
        return f"<rlkit.Session backend={self.backend!r} algo={algo!r} steps={getattr(self, 'steps_done', 0)} " \
               f"{'closed' if self.closed else 'live'}>"
