"""Faults a long run meets (issue 15): each leaves the Session consistent and says what happened.

Gradients never carry over a cut update; close() always frees the workers; the run directory is checked
before Ray starts and a used one is refused; a failed stats write keeps the step; non-finite rewards and
skipped updates warn or stop (`actor.on_nonfinite`); a replaced Session and a dead worker say how to go on.
Ctrl-C during learn lets the update finish and counts it (local and Ray); a process killed in the middle of
a save leaves the previous checkpoint loadable. Most tests use the local backend (seconds); the ones about
worker processes use the shared Ray cluster.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from typing import Any

import psutil
import pytest
import torch

import rlkit
from rlkit.batch import Batch
from rlkit.cluster import ClusterRuntime, WorkerDiedError
from rlkit.config import ConfigError
from rlkit.monitor.dashboard import Dashboard
from rlkit.monitor.runlog import read_stats
from rlkit.monitor.session_monitor import SessionMonitor, StatsWriteError
from rlkit.nonfinite import NonFiniteError, check_scores, check_update
from rlkit.run_checkpoint import LATEST_FILE, find_checkpoint
from rlkit.session_support import RunDirectoryError, run_directory
from rlkit.workers.optim import OptimConfig, Optimizer
from rlkit.workers.train_step import mean_of_steps, train_minibatch


def tiny_config(tmp_path, name="run", *, backend="local", **overrides):
    base = dict(
        logging={"run_dir": str(tmp_path), "run_name": name, "dashboard": False},
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4},
        actor={"mini_batch_size": 16, "micro_batch_size": 8},
        critic={"micro_batch_size": 8},
        cluster={"backend": backend, "threads_per_worker": 1},
    )
    base.update(overrides)
    return rlkit.Config.preset("arithmetic-tiny", **base)


def parity_reward(text: str, ground_truth, eos_seen: bool) -> float:
    """A rule an untrained model meets about half the time, so GRPO's advantages are not all 0."""
    return float(bool(text) and ord(text[0]) % 2 == 1)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], seconds: float = 30.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


# ---- 1. gradients are zeroed at the start of every update ------------------------------------------------


def _linear_update(model, optimizer, mini, *, fail_on=None):
    """One `train_minibatch` on a linear model: 2 micro-batches of 2 rows; `fail_on`: raise in that micro-batch."""
    calls = []

    def forward(mb):
        return {"y": model(mb.advantages).squeeze(-1)}  # (b,)

    def loss_fn(outputs, mb, tokens, seqs):
        calls.append(len(mb))
        if len(calls) == fail_on:
            raise RuntimeError("loss_fn failed on this micro-batch")
        return (outputs["y"] ** 2).sum() / seqs, {}

    return train_minibatch(optimizer, mini, micro_batch_size=2, forward=forward, loss_fn=loss_fn,
                           device=torch.device("cpu"), where="test")


def test_an_update_cut_between_micro_batches_leaves_no_gradient_for_the_next():
    torch.manual_seed(0)
    mini = Batch(response_ids=torch.zeros(4, 3, dtype=torch.long), response_mask=torch.ones(4, 3),
                 advantages=torch.randn(4, 3), batch_size=[4])
    # eps = 10 makes AdamW's first step proportional to the gradient (with eps ~ 0 it is its sign, which an
    # added stale gradient of the same sign would not change)
    cfg = OptimConfig(lr=0.1, eps=10.0, grad_clip=None)

    def fresh():
        torch.manual_seed(1)
        model = torch.nn.Linear(3, 1)
        return model, Optimizer(model, cfg)

    clean_model, clean_opt = fresh()
    _linear_update(clean_model, clean_opt, mini)

    model, opt = fresh()
    with pytest.raises(RuntimeError, match="failed on this micro-batch"):
        _linear_update(model, opt, mini, fail_on=2)  # the first micro-batch's backward already ran
    assert model.weight.grad is not None  # what a cut update leaves behind
    assert opt.steps == 0
    _linear_update(model, opt, mini)
    assert torch.equal(model.weight, clean_model.weight) and torch.equal(model.bias, clean_model.bias)


# ---- 2. close() always frees the processes -----------------------------------------------------------------


def _disk_full(self, path):
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


def test_close_frees_the_workers_when_writing_the_dashboard_fails(ray_cluster, tmp_path, monkeypatch):
    s = rlkit.Session(tiny_config(tmp_path, backend="ray"), reward_fn=parity_reward)
    pids = list(s.group.pids)
    assert pids and os.getpid() not in pids and all(alive(p) for p in pids)
    s.generate()  # a dashboard update: close() has a dashboard to write
    monkeypatch.setattr(Dashboard, "write_html", _disk_full)
    with pytest.raises(OSError, match="No space left on device") as info:
        s.close()
    assert any("dashboard.html" in note for note in getattr(info.value, "__notes__", []))
    assert s.closed and s.group.closed
    assert wait_gone(pids) == []  # the Ray worker processes are gone
    s.close()  # a second close is quiet


def test_close_finishes_the_run_log_and_frees_the_group_when_both_writes_fail(tmp_path, monkeypatch):
    from rlkit.monitor.runlog import RunLog

    s = rlkit.Session(tiny_config(tmp_path), reward_fn=parity_reward)
    s.generate()
    finished = []

    def failing_finish(self):
        finished.append(True)
        raise RuntimeError("W&B finish failed")

    monkeypatch.setattr(Dashboard, "write_html", _disk_full)
    monkeypatch.setattr(RunLog, "close", failing_finish)
    with pytest.raises(OSError, match="No space left"):  # the first error wins
        s.close()
    assert finished == [True] and s.closed and s.group.closed
    s.close()
    assert finished == [True]  # not tried again


# ---- 3. the run directory is checked before Ray starts ----------------------------------------------------


def _no_cluster(*args, **kwargs):
    raise AssertionError("ClusterRuntime.acquire ran: the run directory was not checked first")


def test_an_unusable_run_directory_fails_before_the_cluster_starts(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the run directory's parent should be")
    monkeypatch.setattr(ClusterRuntime, "acquire", _no_cluster)
    for name in ("run", None):  # a named run and a timestamped one
        cfg = tiny_config(blocker / "runs", name)
        with pytest.raises(RunDirectoryError, match=r"logging\.run_dir / logging\.run_name") as info:
            rlkit.Session(cfg)
        assert str(blocker) in str(info.value) and "logging.run_dir (now" in str(info.value)
    # a good folder: made before the cluster is asked for
    with pytest.raises(AssertionError, match="acquire ran"):
        rlkit.Session(tiny_config(tmp_path / "runs", "ok"))
    assert (tmp_path / "runs" / "ok").is_dir()


# ---- 4. a used run directory is refused; timestamped names never collide ------------------------------------


def test_run_directory_refuses_a_used_run_unless_resuming(tmp_path):
    cfg = tiny_config(tmp_path, "exp")
    path = run_directory(cfg)
    assert path == tmp_path / "exp" and path.is_dir() and list(path.iterdir()) == []  # the write check left nothing
    (path / "stats.jsonl").write_text("")
    assert run_directory(cfg) == path  # a folder whose run logged no step is reused
    (path / "stats.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(RunDirectoryError) as info:
        run_directory(cfg)
    message = str(info.value)
    assert f"rlkit.Session.resume({str(path)!r})" in message and "logging.run_name" in message
    assert "1 line in stats.jsonl" in message
    assert run_directory(cfg, resume=True) == path
    other = tiny_config(tmp_path, "ckpt")
    (tmp_path / "ckpt" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunDirectoryError, match="a checkpoints/ folder"):
        run_directory(other)


def test_timestamped_run_names_get_a_suffix_instead_of_sharing_a_folder(tmp_path, monkeypatch):
    import rlkit.session_support as support

    monkeypatch.setattr(support.time, "strftime", lambda fmt: fmt.replace("%Y%m%d-%H%M%S", "20261204-010203"))
    cfg = tiny_config(tmp_path, None)
    names = [run_directory(cfg).name for _ in range(3)]
    assert names == ["grpo-20261204-010203", "grpo-20261204-010203-2", "grpo-20261204-010203-3"]


def test_a_new_session_with_a_used_run_name_is_refused_before_any_worker(tmp_path, monkeypatch):
    """Today's bug: the second run appended its step 1 after the first run's steps (stats.jsonl [1, 2, 1])."""
    cfg = tiny_config(tmp_path, "same")
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        s.train(2)
    monkeypatch.setattr(ClusterRuntime, "acquire", _no_cluster)
    with pytest.raises(RunDirectoryError, match=r"already holds a run \(2 lines in stats.jsonl\)"):
        rlkit.Session(cfg, reward_fn=parity_reward)
    steps = [json.loads(line)["step"] for line in (tmp_path / "same" / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


# ---- 5. a failed stats write never loses an applied step -------------------------------------------------------


def test_a_failed_stats_write_keeps_the_step_counted(tmp_path, monkeypatch):
    import rlkit.monitor.runlog as runlog

    def full(path, items):
        raise OSError(errno.ENOSPC, "No space left on device")

    with rlkit.Session(tiny_config(tmp_path), reward_fn=parity_reward) as s:
        original = runlog._append_lines
        monkeypatch.setattr(runlog, "_append_lines", full)
        with pytest.raises(StatsWriteError) as info:
            s.step()
        message = str(info.value)
        assert "step 1 was applied and counted" in message and str(s.run_dir / "stats.jsonl") in message
        assert isinstance(info.value, OSError) and isinstance(info.value.__cause__, OSError)
        assert s.steps_done == 1 and s.monitor.step == 1 and [h["step"] for h in s.monitor.history] == [1]
        monkeypatch.setattr(runlog, "_append_lines", original)
        assert s.step()["step"] == 2
    lines = [json.loads(line) for line in (s.run_dir / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2]  # step 1's line is lost, its step is not


# ---- 6. non-finite rewards and skipped updates warn or stop ---------------------------------------------------


def test_check_scores_names_the_step_and_the_rows():
    scores = torch.tensor([0.0, 1.0, float("nan"), 0.5, 1.0, float("nan"), 0.0, 1.0])
    with pytest.warns(RuntimeWarning, match=r"step 7: scores of 2 of 8 rows .*\(rows \[2, 5\]; values nan, nan\)"):
        assert check_scores(scores, step=7, mode="skip") == [2, 5]
    with pytest.raises(NonFiniteError, match=r"step 7: costs .*rows \[2, 5\].*weights were not changed"):
        check_scores(scores, step=7, field="costs", mode="raise")
    assert issubclass(NonFiniteError, ValueError)
    # a huge finite score breaks the advantages too; 1e39 is finite in Python but inf in float32
    huge = torch.tensor([1e30, 0.0, 3.0, -1e16, 1e15])
    with pytest.raises(NonFiniteError, match=r"rows \[0, 3\]"):
        check_scores(huge, step=1, mode="raise")
    with pytest.raises(NonFiniteError, match=r"rows \[1\]; values inf"):
        check_scores(torch.tensor([0.0, 1e39], dtype=torch.float32), step=1, mode="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_scores(torch.tensor([0.0, -2.0, 1e15]), step=1, mode="skip") == []
    with pytest.raises(ValueError, match="actor.on_nonfinite = 'sometimes'"):
        check_scores(scores, step=1, mode="sometimes")


def test_skipped_optimizer_steps_are_counted_and_reported():
    steps = [{"loss": 1.0, "grad_norm": float("nan"), "lr": 0.1, "skipped": 1.0, "tokens": 3.0},
             {"loss": 1.0, "grad_norm": 2.0, "lr": 0.1, "skipped": 0.0, "tokens": 3.0}]
    out = mean_of_steps(steps)
    assert out["skipped"] == 0.5 and out["skipped_steps"] == 1.0 and out["optimizer_steps"] == 2.0
    stats = {f"critic/{k}": v for k, v in out.items()}
    with pytest.warns(RuntimeWarning, match=r"step 4: 1 of 2 optimizer steps of the critic were skipped.*did change"):
        assert check_update(stats, step=4, role="critic", mode="skip") == 1
    all_skipped = {"actor/skipped": 1.0, "actor/optimizer_steps": 2.0}  # the fraction alone also counts
    with pytest.raises(NonFiniteError, match=r"step 4: 2 of 2 .* actor .*weights were NOT changed"):
        check_update(all_skipped, step=4, role="actor", mode="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_update({"actor/skipped": 0.0, "actor/optimizer_steps": 2.0}, step=4, mode="raise") == 0


def test_on_nonfinite_is_validated():
    with pytest.raises(ConfigError, match=r"actor.on_nonfinite = 'stop': must be one of 'skip', 'raise'"):
        rlkit.Config().override({"actor.on_nonfinite": "stop"})
    assert rlkit.Config().actor.on_nonfinite == "skip"


def huge_reward(text: str, ground_truth, eos_seen: bool) -> float:
    return 1e30  # finite to the reward checks, but it overflows the advantages


def test_huge_rewards_warn_every_step_or_stop_before_the_update(tmp_path):
    with rlkit.Session(tiny_config(tmp_path, "skip"), reward_fn=huge_reward) as s:
        with pytest.warns(RuntimeWarning) as caught:
            history = s.train(2)
    messages = [str(w.message) for w in caught if "rows" in str(w.message)]
    assert [m.split(":")[0] for m in messages] == ["step 1", "step 2"]
    assert all("scores of 16 of 16 rows" in m for m in messages) and len(history) == 2

    cfg = tiny_config(tmp_path, "raise", actor={"mini_batch_size": 16, "micro_batch_size": 8, "on_nonfinite": "raise"})
    with rlkit.Session(cfg, reward_fn=huge_reward) as s:
        with pytest.raises(NonFiniteError, match=r"step 1: scores of 16 of 16 rows.*rows \[0, 1, 2"):
            s.step()
        assert s.steps_done == 0 and "learn" not in s.monitor.stages
        assert s.roles["actor"].optimizer_steps() == 0  # no update ran


def test_a_skipped_update_warns_or_stops_with_the_weights_unchanged(tmp_path):
    def nan_batch(s):
        batch = s.prepare(s.generate())
        return batch, batch.replace(advantages=torch.full_like(batch.advantages, float("nan")))

    with rlkit.Session(tiny_config(tmp_path, "skip"), reward_fn=parity_reward) as s:
        _, bad = nan_batch(s)
        with pytest.warns(RuntimeWarning, match=r"step 1: 1 of 1 optimizer steps of the actor were skipped"):
            stats = s.learn(bad)
        assert stats["actor/skipped_steps"] == 1.0 and "time/sync" in stats

    cfg = tiny_config(tmp_path, "raise", actor={"mini_batch_size": 16, "micro_batch_size": 8, "on_nonfinite": "raise"})
    with rlkit.Session(cfg, reward_fn=parity_reward) as s:
        good, bad = nan_batch(s)
        before = s.compute_old_logprobs(good, force=True).old_logprobs
        with pytest.raises(NonFiniteError, match=r"step 1: 1 of 1 .*actor.*weights were NOT changed"):
            s.learn(bad)
        assert "sync" not in s.monitor.stages  # stopped before the weight sync
        assert torch.equal(s.compute_old_logprobs(good, force=True).old_logprobs, before)


# ---- 7. a replaced Session says so --------------------------------------------------------------------------


def test_a_replaced_or_closed_session_says_so(tmp_path):
    first = rlkit.Session(tiny_config(tmp_path, "first"), reward_fn=parity_reward)
    second = rlkit.Session(tiny_config(tmp_path, "second"), reward_fn=parity_reward)
    with pytest.raises(RuntimeError, match=r"replaced by a newer rlkit\.Session.*use the newer Session"):
        first.generate()
    assert first.closed and not second.closed
    second.close()
    with pytest.raises(RuntimeError, match=r"closed with close\(\): create a new rlkit\.Session"):
        second.generate()
    first.close()  # the replaced one's monitor closes quietly


# ---- 8. a dead worker's error says how to resume ------------------------------------------------------------


def test_a_dead_worker_error_in_a_stage_names_resume_and_the_latest_checkpoint(tmp_path):
    from rlkit.config import Config

    monitor = SessionMonitor(Config(), tmp_path / "run", roles=["actor"])
    with pytest.raises(WorkerDiedError) as info:
        with monitor.stage("learn"):
            raise WorkerDiedError("actor", "update", 1, 2, ["actor", "ref"], "SIGKILL")
    notes = "\n".join(info.value.__notes__)
    assert "rank 1 of 2" in str(info.value) and "during actor.update" in str(info.value)
    assert f"rlkit.Session.resume({str(tmp_path / 'run')!r})" in notes and "No checkpoint" in notes
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-000003")
    with pytest.raises(WorkerDiedError) as info:
        with monitor.stage("generate"):
            raise WorkerDiedError("actor", "generate", 0, 1, ["actor"], "SIGKILL")
    assert info.value.__notes__ == [
        f"rlkit: the Session cannot go on. rlkit.Session.resume({str(tmp_path / 'run')!r}) continues this run from "
        f"its latest checkpoint (the one {tmp_path / 'run' / 'checkpoints' / 'latest'} names)"]
    monitor.close()


def test_a_killed_worker_during_a_session_stage_raises_quickly_with_the_resume_note(ray_cluster, tmp_path):
    with rlkit.Session(tiny_config(tmp_path, backend="ray"), reward_fn=parity_reward) as s:
        victim = s.group.pids[0]
        os.kill(victim, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError) as info:
            s.generate()
        assert time.monotonic() - start < 30
        assert "rank 0 of 1" in str(info.value) and "'actor'" in str(info.value)
        assert any(f"rlkit.Session.resume({str(s.run_dir)!r})" in note for note in info.value.__notes__)


# --- Ctrl-C during learn, a process killed in the middle of a save ----------------------------------------


def interrupt_config(tmp_path, name):
    """Two optimizer steps of two micro-batches per RL step: an interrupt can fall between them."""
    return tiny_config(tmp_path, name, actor={"mini_batch_size": 8, "micro_batch_size": 4, "lr": 3e-3},
                       critic={"micro_batch_size": 4})


def test_ctrl_c_in_the_middle_of_an_update_finishes_and_counts_it(tmp_path, monkeypatch):
    """Local backend: SIGINT arrives between the two optimizer steps of step 2. The update completes, the
    step is counted and logged, then KeyboardInterrupt stops train(): the weights equal a clean 2-step run."""
    with rlkit.Session(interrupt_config(tmp_path, "clean"), reward_fn=parity_reward) as s:
        s.train(2)
        clean = s.roles["actor"].full_state_dict()

    from rlkit.workers.optim import Optimizer

    original, calls = Optimizer.step, []

    def step_then_interrupt(self):
        calls.append(1)
        out = original(self)
        if len(calls) == 3:  # the first of step 2's two optimizer steps has just been applied
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Optimizer, "step", step_then_interrupt)
    with rlkit.Session(interrupt_config(tmp_path, "interrupted"), reward_fn=parity_reward) as s:
        with pytest.raises(KeyboardInterrupt, match="completed and was counted"):
            s.train(5)
        assert s.steps_done == 2 and len(calls) == 4  # step 2 finished its update; step 3 never started
        assert s.roles["actor"].optimizer_steps() == 4
        weights = s.roles["actor"].full_state_dict()
        assert all(torch.equal(weights[k], clean[k]) for k in clean)
        s.step()  # and the Session goes on
    assert [line["step"] for line in read_stats(tmp_path / "interrupted")] == [1, 2, 3]


@dataclasses.dataclass
class SlowLoss:
    """The algorithm's loss, one second slower per micro-batch (runs on the worker)."""

    inner: Any

    def __call__(self, outputs, mb, global_tokens, global_seqs):
        time.sleep(1.0)
        return self.inner(outputs, mb, global_tokens, global_seqs)


def test_ctrl_c_while_ray_workers_update_leaves_no_ghost_update(ray_cluster, tmp_path):
    """Ray: the driver is interrupted while the worker is inside actor.update. Before the fix the driver
    gave up, the worker finished the update anyway, and the weights moved with steps_done unchanged."""
    from rlkit.algos.base import get_algorithm

    cfg = tiny_config(tmp_path, "ray", backend="ray")
    algo = get_algorithm("grpo", cfg)
    algo.actor_loss = SlowLoss(algo.actor_loss)
    with rlkit.Session(cfg, algorithm=algo, reward_fn=parity_reward) as s:
        s.step()
        update = s.update_actor

        def update_interrupted_after(batch):  # Ctrl-C 0.3 s into the worker's 1 s update
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            return update(batch)

        s.update_actor = update_interrupted_after
        batch = s.prepare(s.generate())
        with pytest.raises(KeyboardInterrupt):
            s.learn(batch)  # a notebook cell running learn alone
        assert s.roles["actor"].optimizer_steps() == 2  # the update is whole, and it is the driver's to count
        with pytest.raises(KeyboardInterrupt, match="completed and was counted"):
            s.step()
        assert s.steps_done == 2 and s.roles["actor"].optimizer_steps() == 3
    assert [line["step"] for line in read_stats(tmp_path / "ray")] == [1, 2]


def test_an_interrupted_generate_consumes_no_prompts(tmp_path, monkeypatch):
    with rlkit.Session(tiny_config(tmp_path, "gen"), reward_fn=parity_reward) as s:
        before = s.prompts.state_dict()

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(s, "rollout", interrupted)
        with pytest.raises(KeyboardInterrupt):
            s.step()
        assert s.prompts.state_dict() == before and s.steps_done == 0


KILLED_SAVE = textwrap.dedent('''
    import os, signal, sys
    import rlkit, rlkit.run_checkpoint as rc
    from tests.test_faults import tiny_config, parity_reward
    from pathlib import Path

    tmp = Path(sys.argv[1])
    s = rlkit.Session(tiny_config(tmp, "killed"), reward_fn=parity_reward)
    s.train(1)
    s.save()
    s.train(1)
    real_fsync = rc.fsync_tree
    def die_in_the_middle(path):  # the roles' shards and session.pt are written, the rename is not done
        print("KILLING", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    rc.fsync_tree = die_in_the_middle
    s.save()
''')


def test_a_save_killed_midway_leaves_the_previous_checkpoint_loadable(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path)], cwd=root, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "KILLING" in proc.stdout
    checkpoints = tmp_path / "killed" / "checkpoints"
    assert (checkpoints / LATEST_FILE).read_text().strip() == "step-000001"
    partial = [p.name for p in checkpoints.iterdir() if ".partial-" in p.name]
    assert len(partial) == 1 and partial[0].startswith(".step-000002")  # the half-written one, set aside
    assert find_checkpoint(tmp_path / "killed").name == "step-000001"
    with rlkit.Session.resume(tmp_path / "killed", reward_fn=parity_reward) as s:
        assert s.steps_done == 1
        s.step()
        s.save()
    assert not [p for p in checkpoints.iterdir() if ".partial-" in p.name]  # the next save cleans it up
    assert (checkpoints / LATEST_FILE).read_text().strip() == "step-000002"
