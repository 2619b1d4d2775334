"""Whole-run checkpoints: save, resume exactly, fork with a changed hyperparameter, export.

The exactness tests run two Sessions side by side on the tiny arithmetic model (fp32, CPU, local backend):
one trains k+1 steps without stopping, the other trains k steps, saves, is closed, and a third Session
resumed from that checkpoint trains step k+1. Every weight (actor and critic) and every stat that is not a
time or a memory reading must be identical.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import rlkit
from rlkit.config import ConfigError
from rlkit.monitor.runlog import read_stats
from rlkit.run_checkpoint import LATEST_FILE, find_checkpoint, list_checkpoints


def parity_reward(text: str, ground_truth, eos_seen: bool) -> float:
    """Scores about half of an untrained model's answers (signal for every algorithm)."""
    return float(bool(text) and ord(text[0]) % 2 == 1)


def digit_cost(text: str, ground_truth, eos_seen: bool) -> float:
    """A cost Safe-RLHF can trade against the reward: the share of digits in the answer."""
    return sum(c.isdigit() for c in text) / max(1, len(text))


ALGO_SETTINGS = {
    "grpo": {},
    "ppo": {"algo": {"name": "ppo", "kl_coef": 0.05, "kl_target": 0.01}},  # critic + adaptive KL state
    "safe_rlhf": {"algo": {"name": "safe_rlhf", "cost_limit": 0.1, "lagrange_lr": 0.5}},  # the multiplier
    "dapo": {"algo": {"name": "dapo", "dynamic_sampling": True}},  # extra prompts drawn per step
}


def config(tmp_path, name: str, algo: str = "grpo", **overrides):
    base = dict(
        logging={"run_dir": str(tmp_path), "run_name": name, "dashboard": False},
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4},
        actor={"mini_batch_size": 8, "micro_batch_size": 8, "lr": 3e-3},  # two optimizer steps per RL step
        critic={"micro_batch_size": 8},
        cluster={"backend": "local", "threads_per_worker": 1},
        data={"train_size": 24},  # 6 steps per pass: resumes cross a reshuffle
    )
    base.update({"algo": {"name": algo}})
    base.update(ALGO_SETTINGS[algo])
    base.update(overrides)
    return rlkit.Config.preset("arithmetic-tiny", **base)


FNS = {"reward_fn": parity_reward, "cost_fn": digit_cost}


def comparable(stats: dict) -> dict:
    """The stats that a deterministic run must repeat: no clock, memory or throughput readings."""
    noisy = ("time/", "throughput/", "memory/", "seconds", "tokens_per_s", "_gb", "gib", "peak", "mfu", "flops")
    out = {}
    for key, value in stats.items():
        if any(part in key for part in noisy):
            continue
        out[key] = value
    return out


def weights(s) -> dict[str, torch.Tensor]:
    out = {f"actor.{k}": v for k, v in s.roles["actor"].full_state_dict().items()}
    if "critic" in s.roles:
        out.update({f"critic.{k}": v for k, v in s.roles["critic"].full_state_dict().items()})
    return out


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("algo", list(ALGO_SETTINGS))
def test_resumed_step_equals_the_step_of_a_run_that_never_stopped(tmp_path, algo):
    k = 4  # crosses the 6-step pass of 24 prompts only for DAPO's extra draws; the next test covers passes
    with rlkit.Session(config(tmp_path, "straight", algo), **FNS) as s:
        straight = s.train(k + 1)
        straight_weights = weights(s)
        straight_prompts = list(s.last_batch.prompt_text)
    with rlkit.Session(config(tmp_path, "saved", algo), **FNS) as s:
        saved_stats = s.train(k)
        path = s.save()
        before_close = weights(s)
    assert path == tmp_path / "saved" / "checkpoints" / "step-000004"
    assert (tmp_path / "saved" / "checkpoints" / LATEST_FILE).read_text().strip() == "step-000004"
    for a, b in zip(straight[:k], saved_stats):
        assert comparable(a) == comparable(b)  # the two runs really are the same run up to the save
    with rlkit.Session.resume(tmp_path / "saved", **FNS) as r:
        assert r.steps_done == k
        assert r.dashboard.history["reward/mean"][0] == list(range(1, k + 1))  # the curves are back
        assert_same_weights(weights(r), before_close)  # the checkpoint restores what was saved ...
        resumed = r.step()
        assert_same_weights(weights(r), straight_weights)  # ... and the next step is the same step
        assert list(r.last_batch.prompt_text) == straight_prompts
        assert len(r.monitor.history) == k + 1
    assert comparable(resumed) == comparable(straight[k])
    if algo == "ppo":
        assert resumed["actor/kl_coef"] == straight[k]["actor/kl_coef"] != 0.05  # the adaptive coefficient moved
    if algo == "safe_rlhf":
        assert resumed["safe/lambda"] == straight[k]["safe/lambda"]
    steps = [line["step"] for line in read_stats(tmp_path / "saved")]
    assert steps == list(range(1, k + 2))  # stats.jsonl continues the same curve


def test_a_resumed_run_sees_every_prompt_once_per_pass(tmp_path):
    """24 prompts, 4 per step: 6 steps per pass. Resumed at step 4 (mid-pass) and at step 8 (the next
    pass), the run draws exactly the prompts of the run that never stopped: each once per pass."""
    def drawn(s, steps):
        out = []
        for _ in range(steps):
            s.step()
            out.append(list(s.last_batch.prompt_text[:: s.config.rollout.n]))  # one row per prompt
        return out

    with rlkit.Session(config(tmp_path, "straight"), **FNS) as s:
        straight = drawn(s, 12)
    with rlkit.Session(config(tmp_path, "stop-go"), **FNS) as s:
        pieces = drawn(s, 4)
        s.save()
    with rlkit.Session.resume(tmp_path / "stop-go", **FNS) as s:
        pieces += drawn(s, 4)
        s.save()
    with rlkit.Session.resume(tmp_path / "stop-go", **FNS) as s:
        pieces += drawn(s, 4)
    assert pieces == straight
    for first in (0, 6):
        one_pass = [p for step in pieces[first:first + 6] for p in step]
        assert len(one_pass) == 24 and len(set(one_pass)) == 24, "a prompt repeated or skipped within a pass"


def test_save_every_and_keep_last_in_train(tmp_path):
    cfg = config(tmp_path, "periodic", logging={"run_dir": str(tmp_path), "run_name": "periodic",
                                                "dashboard": False, "save_every": 2, "keep_last": 2})
    with rlkit.Session(cfg, **FNS) as s:
        s.train(7)
    names = [p.name for p in list_checkpoints(tmp_path / "periodic")]
    assert names == ["step-000004", "step-000006"]
    assert find_checkpoint(tmp_path / "periodic").name == "step-000006"


def test_resume_truncates_the_lines_a_crashed_run_wrote_after_its_last_save(tmp_path):
    with rlkit.Session(config(tmp_path, "crashed"), **FNS) as s:
        s.train(2)
        s.save()
        s.train(2)  # steps 3 and 4 are logged but never saved: the "crash" loses them
    with rlkit.Session.resume(tmp_path / "crashed", **FNS) as s:
        s.train(1)
    assert [line["step"] for line in read_stats(tmp_path / "crashed")] == [1, 2, 3]
    moved = (tmp_path / "crashed" / "stats.after-step-2.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in moved] == [3, 4]  # kept aside, not deleted
    run = json.loads((tmp_path / "crashed" / "run.json").read_text())
    assert [r["step"] for r in run["resumed"]] == [2]


def test_fork_changes_a_hyperparameter_and_records_its_parent(tmp_path):
    with rlkit.Session(config(tmp_path, "parent"), **FNS) as s:
        s.train(3)
        child = s.fork({"algo.clip_high": 0.28})
    with child:
        assert s.closed and not child.closed
        assert child.config.algo.clip_high == 0.28 and child.steps_done == 3
        assert child.run_dir == tmp_path / "parent-fork3"
        child.train(2)
    run = json.loads((tmp_path / "parent-fork3" / "run.json").read_text())
    assert run["parent"]["run"] == str(tmp_path / "parent") and run["parent"]["step"] == 3
    assert [line["step"] for line in read_stats(tmp_path / "parent-fork3")] == [4, 5]  # numbering continues
    assert [line["step"] for line in read_stats(tmp_path / "parent")] == [1, 2, 3]  # the parent is untouched
    cmp = rlkit.compare([tmp_path / "parent", tmp_path / "parent-fork3"], metrics=["reward/mean"])
    child_run = cmp.runs[1]
    assert child_run.parent["step"] == 3 and child_run.series("reward/mean")[0] == [4.0, 5.0]
    assert "fork of parent at step 3" in cmp.to_html()

    with pytest.raises(ConfigError, match="fork=True"):
        rlkit.Session.resume(tmp_path / "parent", {"logging.run_name": "elsewhere"})


def test_fork_keeps_the_algorithm_object_it_was_given(tmp_path):
    from rlkit.algos.base import get_algorithm

    cfg = config(tmp_path, "custom")
    algo = get_algorithm("grpo", cfg)
    with rlkit.Session(cfg, algorithm=algo, **FNS) as s:
        s.step()
        child = s.fork({"actor.lr": 1e-3})
    with child:
        assert child.algo is algo and child.reward_fn is parity_reward


def test_export_writes_a_folder_transformers_loads(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with rlkit.Session(config(tmp_path, "exported"), **FNS) as s:
        s.train(1)
        out = s.export(tmp_path / "export")
        trained = s.roles["actor"].full_state_dict()
        batch = s.last_batch
        logprobs = s.compute_old_logprobs(batch, force=True).old_logprobs
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) > 0
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trained.items() if k in loaded)
    # the exported model scores the batch's responses as the trainer does
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask,
                       position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.float()
    t = batch.prompt_ids.shape[1]
    resp_logits = logits[:, t - 1:-1]
    lp = torch.log_softmax(resp_logits, -1).gather(-1, batch.response_ids[..., None])[..., 0]
    valid = batch.response_mask.bool()
    assert (lp - logprobs)[valid].abs().max() < 1e-4


def test_saving_in_the_middle_of_a_step_warns(tmp_path):
    with rlkit.Session(config(tmp_path, "midway"), **FNS) as s:
        s.step()
        s.evaluate(num_prompts=4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            s.save()  # between steps (an evaluation is not a step): no warning
        s.generate()
        with pytest.warns(RuntimeWarning, match="step 2 is in progress"):
            s.save()


def test_resume_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rlkit.Session.resume(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        rlkit.Session.resume(tmp_path / "empty")


def test_saved_on_one_rank_resumes_on_two_ranks_and_back(ray_cluster, tmp_path):
    """DCP stores tensors by name and global shape: a checkpoint of one rank loads into two FSDP2 ranks
    (and back), and an update of the same batch from the loaded state agrees within 1e-6 (fp32)."""
    def ranks(n):
        return {"backend": "ray", "devices_per_node": n, "threads_per_worker": 1}

    with rlkit.Session(config(tmp_path, "ranks", cluster=ranks(1)), **FNS) as s:
        s.train(2)
        one_rank = s.save(tmp_path / "one-rank-ckpt")
        saved = weights(s)
        batch = s.last_batch  # a prepared batch: learn on it again from the saved state, once per layout
        s.learn(batch)
        learned_one = weights(s)
    with rlkit.Session.resume(one_rank, {"cluster.devices_per_node": 2}, fork=True, **FNS) as r:
        assert r.group.world_size == 2
        loaded = weights(r)
        assert max(float((loaded[k] - saved[k]).abs().max()) for k in saved) <= 1e-6
        r.learn(batch)
        learned_two = weights(r)
        two_rank = r.save(tmp_path / "two-rank-ckpt")
    assert max(float((learned_two[k] - learned_one[k]).abs().max()) for k in saved) <= 1e-6
    with rlkit.Session.resume(two_rank, {"cluster.devices_per_node": 1}, fork=True, **FNS) as back:
        assert back.group.world_size == 1
        assert max(float((weights(back)[k] - learned_two[k]).abs().max()) for k in saved) <= 1e-6


def test_wandb_continues_the_same_run_after_resume(tmp_path):
    from rlkit.monitor.wandb_read import read_offline_run

    log = {"run_dir": str(tmp_path), "run_name": "tracked", "dashboard": False, "wandb": True,
           "wandb_mode": "offline"}
    with rlkit.Session(config(tmp_path, "tracked", logging=log), **FNS) as s:
        s.train(2)
        s.save()
        first_id = s.monitor.runlog.wandb.run.id
    with rlkit.Session.resume(tmp_path / "tracked", **FNS) as r:
        assert r.monitor.runlog.wandb.run.id == first_id
        r.train(1)
    run = json.loads((tmp_path / "tracked" / "run.json").read_text())
    assert run["wandb"]["id"] == first_id
    # one folder per process run of the same W&B run id (`wandb sync` merges them); a resume within the same
    # second as the first run gets W&B's "-1" suffix, which sorts after it as a later second does
    folders = sorted((tmp_path / "tracked" / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f"-{first_id}" in f.name for f in folders)
    assert [row["step"] for row in read_offline_run(folders[-1]).history] == [3]
