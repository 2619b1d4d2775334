"""Asynchronous RL (`rollout.async_steps`, rlkit.pipeline): the staleness bound, exactness, resume, faults.

The exactness tests run on the local backend, where a pool call runs at once when it is submitted: the
pipeline's order of pushes and generations is the same as on Ray, without the overlap, so runs repeat bit
for bit. The bound under random delays runs on Ray, where the pool and the trainer really run side by side.
"""

from __future__ import annotations

import random
import time

import pytest
import torch

import rlkit
from rlkit.cluster import RoleSpec, register
from rlkit.config import ConfigError
from rlkit.pipeline import idle_fraction
from rlkit.rollout.pool import RolloutWorker
from tests.test_run_checkpoint import FNS, assert_same_weights, comparable, config, weights


def async_config(tmp_path, name: str, k: int, **overrides):
    rollout = {"prompts_per_step": 4, "n": 4, "max_new_tokens": 4, "async_steps": k, **overrides.pop("rollout", {})}
    return config(tmp_path, name, rollout=rollout, **overrides)


def untimed(stats: dict) -> dict:
    return {k: v for k, v in comparable(stats).items() if not k.startswith("pipeline/")}


def test_async_steps_0_is_the_synchronous_loop_of_cells(tmp_path):
    """async_steps = 0 builds no pipeline, and train() equals generate/prepare/learn run as cells, bit for bit."""
    with rlkit.Session(async_config(tmp_path, "train", 0), **FNS) as s:
        assert s.pipeline is None and "rollout" not in s.roles
        trained = s.train(3)
        train_weights = weights(s)
        assert s.last_batch.policy_version.tolist() == [2] * 16  # drawn after two updates
    with rlkit.Session(async_config(tmp_path, "cells", 0), **FNS) as s:
        for _ in range(3):
            batch = s.prepare(s.generate())
            s.learn(batch)
            s.steps_done += 1
        assert_same_weights(weights(s), train_weights)
    assert all("async/staleness_max" not in stats for stats in trained)


def test_one_step_off_trains_each_batch_one_version_behind(tmp_path):
    with rlkit.Session(async_config(tmp_path, "k1", 1), **FNS) as s:
        history = s.train(5)
        assert len(s.pipeline.in_flight) == 2  # the next two generations are already submitted
        assert s.policy_version == 5 and s.pipeline.pool_version == 5
        assert s.last_batch.policy_version.tolist() == [3] * 16  # step 5 trains on version 5 - 1 - 1
    assert [h["async/staleness_max"] for h in history] == [0, 1, 1, 1, 1]
    assert [h["async/staleness_1"] for h in history] == [0, 1, 1, 1, 1]
    # The pool sampled with the weights it was pushed: at step 1 they are the trainer's (the fp32 engine and
    # trainer agree to rounding), afterwards one update behind (lr 3e-3: a KL far above rounding).
    assert abs(history[0]["rollout_corr/kl"]) < 1e-6
    assert all(h["rollout_corr/kl"] > 1e-4 for h in history[1:])
    assert all(0 <= h["pipeline/trainer_idle_frac"] <= 1 for h in history)
    assert "pipeline/rollout_idle_frac" not in history[1] and 0 <= history[2]["pipeline/rollout_idle_frac"] <= 1
    assert all(0 <= h["pipeline/trainer_busy_seconds"] <= h["time/step"] + 0.05 for h in history)


def test_the_dashboard_draws_the_pipeline_per_step():
    from rlkit.monitor.dashboard import PANELS, panel_for

    for key, label in (("pipeline/rollout_idle_frac", "rollout"), ("pipeline/trainer_busy_seconds", "trainer"),
                       ("async/staleness_max", "max"), ("rollout_corr/kl", "kl")):
        index, found = panel_for(key)
        assert found == label, key
    titles = {PANELS[panel_for(k)[0]].title for k in ("pipeline/rollout_busy_seconds", "async/staleness_mean")}
    assert titles == {"pool busy per step (s)", "staleness (policy versions)"}


class DelayedRollouts(RolloutWorker):
    """The pool's calls take a random 0-150 ms longer (seeded per rank)."""

    def __init__(self, ctx, *args, **kwargs):
        super().__init__(ctx, *args, **kwargs)
        self.rng = random.Random(ctx.rank + 11)

    @register("split")
    def generate(self, batch, sampling):
        time.sleep(self.rng.uniform(0, 0.15))
        return super().generate(batch, sampling)

    @register("broadcast")
    def load_weights(self, state, version):
        time.sleep(self.rng.uniform(0, 0.15))
        return super().load_weights(state, version)


def test_no_trained_sample_is_older_than_the_bound_under_random_delays(ray_cluster, tmp_path):
    k, steps = 2, 10
    delays = random.Random(5)

    def slow_reward(text, truth, eos):  # the driver's prepare takes a random 0-100 ms longer too
        time.sleep(delays.uniform(0, 0.1) / 16)
        return FNS["reward_fn"](text, truth, eos)

    cfg = async_config(tmp_path, "delays", k, cluster={"backend": "ray", "threads_per_worker": 1, "devices_per_node": 2},
                       rollout={"pool_devices": 2})
    with rlkit.Session(cfg, reward_fn=slow_reward, cost_fn=FNS["cost_fn"]) as s:
        old = s.pipeline.group
        kwargs = RolloutWorker.kwargs_from_config(cfg.override({"model.path": str(s.model_path)}))
        old.close()
        s.pipeline.group = s.runtime.make_group({"rollout": RoleSpec(DelayedRollouts, kwargs=kwargs)}, old.pool)
        versions = []
        for _ in range(steps):
            stats = s.step()
            versions.append(sorted(set(s.last_batch.policy_version.tolist())))
            assert stats["async/staleness_max"] <= k
            assert s.policy_version - 1 - int(s.last_batch.policy_version.min()) <= k
        spans = s.pipeline.spans
    # The order of submissions fixes every version whatever the delays: step j samples version j - 1 - k.
    assert versions == [[max(0, j - 1 - k)] for j in range(1, steps + 1)]
    pool = [x for x in spans if x["pool"] == "rollout"]
    trainer = [x for x in spans if x["pool"] == "trainer" and x["what"] in ("prepare", "learn")]
    overlapping = [t for t in trainer if any(p["start"] < t["end"] and t["start"] < p["end"] for p in pool)]
    print(f"{len(overlapping)} of {len(trainer)} trainer spans overlap pool work")
    assert len(overlapping) >= steps // 2  # the pool really worked while the trainer prepared and learned


def test_resume_with_generations_in_flight_loses_and_duplicates_none(tmp_path):
    def prompts_of(s):
        return list(s.last_batch.prompt_text[:: s.config.rollout.n])

    with rlkit.Session(async_config(tmp_path, "straight", 1), **FNS) as s:
        straight, drawn = [], []
        for _ in range(6):
            straight.append(s.step())
            drawn.append(prompts_of(s))
        straight_weights = weights(s)
    with rlkit.Session(async_config(tmp_path, "stop-go", 1), **FNS) as s:
        for _ in range(3):
            s.step()
        assert len(s.pipeline.in_flight) == 2
        checkpoint = s.save()
    assert sorted(p.name for p in (checkpoint / "pipeline").iterdir()) == [
        "batch-0.pt", "batch-1.pt", "pipeline.pt", "prompts-0.pt", "prompts-1.pt"]
    with rlkit.Session.resume(tmp_path / "stop-go", **FNS) as r:
        assert r.policy_version == 3 and len(r.pipeline.in_flight) == 2
        resumed, resumed_drawn = [], []
        for _ in range(3):
            resumed.append(r.step())
            resumed_drawn.append(prompts_of(r))
        assert_same_weights(weights(r), straight_weights)
    assert resumed_drawn == drawn[3:]  # the in-flight batches were trained on, in order, once
    for a, b in zip(resumed, straight[3:]):  # pipeline/*: idle fractions and waits are clock readings
        assert untimed(a) == untimed(b)


def test_a_failed_prepare_keeps_the_batch_for_the_next_step(tmp_path):
    calls = {"n": 0}

    def flaky(text, truth, eos):
        calls["n"] += 1
        if calls["n"] == 20:  # inside step 2's prepare (16 rows per step)
            raise ValueError("reward service down")
        return FNS["reward_fn"](text, truth, eos)

    with rlkit.Session(async_config(tmp_path, "flaky", 1, reward={"num_workers": 1}), reward_fn=flaky,
                       cost_fn=FNS["cost_fn"]) as s:
        s.step()
        queued = list(s.pipeline.in_flight[0].batch.result().prompt_text)
        with pytest.raises(Exception, match="reward service down"):
            s.step()
        assert s.steps_done == 1 and s.policy_version == 1 and len(s.pipeline.in_flight) == 2
        stats = s.step()
        assert list(s.last_batch.prompt_text) == queued  # the batch that failed to prepare, not a new one
        assert stats["step"] == 2


def test_a_batch_too_old_after_a_learn_in_a_cell_is_drawn_again(tmp_path):
    with rlkit.Session(async_config(tmp_path, "cells", 1), **FNS) as s:
        s.step()
        queued = [list(e.prompts.prompt_text) for e in s.pipeline.in_flight]
        for _ in range(2):  # two updates outside the pipeline: the queued batches are now 3 versions old
            s.learn(s.prepare(s.generate()))
        assert s.policy_version == 3
        stats = s.step()
        assert stats["async/staleness_max"] == 0  # redrawn on the current weights
        assert list(s.last_batch.prompt_text[:: 4]) == queued[0][:]  # the same prompts, not new ones


def test_async_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"rollout.async_steps.*own generate stage"):
        rlkit.Config.preset("arithmetic-tiny", algo="remax", rollout={"async_steps": 1})
    with pytest.raises(ConfigError, match=r'rollout.async_steps.*needs rollout.engine = "hf"'):
        rlkit.Config.preset("arithmetic-tiny", rollout={"async_steps": 1, "engine": "vllm"})
    with pytest.raises(ConfigError, match=r"rollout.pool_devices.*local"):
        rlkit.Config.preset("arithmetic-tiny", rollout={"async_steps": 1, "pool_devices": 2},
                            cluster={"backend": "local"})
    with pytest.raises(ConfigError, match=r"rollout.async_steps"):
        rlkit.Config.preset("arithmetic-tiny", rollout={"async_steps": -1})
    with pytest.raises(ConfigError, match=r"rollout.partial.*needs rollout.async_steps >= 1"):
        rlkit.Config.preset("arithmetic-tiny", rollout={"partial": True})
    with pytest.raises(ConfigError, match=r"rollout.partial.*needs rollout.pool_devices = 1"):
        rlkit.Config.preset("arithmetic-tiny", rollout={"partial": True, "async_steps": 1, "pool_devices": 2})


def test_idle_fraction_by_hand():
    spans = [{"pool": "p", "start": 1.0, "end": 3.0}, {"pool": "p", "start": 2.0, "end": 4.0},  # overlap: once
             {"pool": "p", "start": 9.0, "end": 12.0}, {"pool": "q", "start": 0.0, "end": 10.0}]
    assert idle_fraction(spans, "p", 0.0, 10.0) == pytest.approx(1 - (3 + 1) / 10)  # [1, 4] and [9, 10]
    assert idle_fraction(spans, "q", 0.0, 10.0) == 0.0
    assert idle_fraction(spans, "r", 0.0, 10.0) == 1.0
    assert idle_fraction(spans, "p", 5.0, 5.0) == 0.0


def test_timeline_figure_has_a_bar_per_span(tmp_path):
    with rlkit.Session(async_config(tmp_path, "timeline", 1), **FNS) as s:
        s.train(3)
        fig = s.pipeline.timeline_figure()
        spans = s.pipeline.spans
    assert (tmp_path / "timeline" / "pipeline_timeline.html").is_file()  # written by close()
    bars = sum(len(trace.x) for trace in fig.data)
    assert bars == len(spans) and {t.name for t in fig.data} >= {"generate", "learn", "prepare", "load_weights"}
    assert set(s.pipeline.idle_fractions()) == {"rollout", "trainer"}
    torch.testing.assert_close(torch.tensor(sorted(x["step"] for x in spans if x["what"] == "learn")),
                               torch.tensor([1, 2, 3]))


# ------------------------------------------------------------------ partial rollouts


def _rollout_group(model_dir, segment: int):
    from rlkit.cluster import WorkerGroup

    return WorkerGroup(None, {"rollout": RoleSpec(RolloutWorker, kwargs={"model": str(model_dir),
                                                                         "partial_segment": segment})},
                       backend="local")


@pytest.fixture(scope="module")
def char_tokenizer():
    from rlkit.data import build_char_tokenizer

    return build_char_tokenizer()


def _prompts(char_tokenizer):
    texts = ["12+34=", "7+8=", "51+6="]
    ids = [char_tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    width = max(map(len, ids))
    pad = char_tokenizer.pad_token_id
    prompt_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids])
    return rlkit.Batch.from_prompts(prompt_ids, mask, prompt_text=texts)


def test_segments_equal_one_generate_while_the_weights_stay(tiny_model_dir, char_tokenizer):
    from rlkit.rollout.sampling import SamplingParams

    params = SamplingParams(n=2, temperature=0.0, max_new_tokens=7)
    with _rollout_group(tiny_model_dir, 0) as whole, _rollout_group(tiny_model_dir, 2) as parts:
        a = whole.rollout.generate(_prompts(char_tokenizer), params)
        b = parts.rollout.generate(_prompts(char_tokenizer), params)
    assert torch.equal(a.response_mask, b.response_mask[:, : a.response_mask.shape[1]])
    assert torch.equal(a.response_ids * a.response_mask, (b.response_ids * b.response_mask)[:, : a.response_ids.shape[1]])
    torch.testing.assert_close(a.rollout_logprobs, b.rollout_logprobs[:, : a.rollout_logprobs.shape[1]],
                               atol=1e-5, rtol=0)  # the continuation's prefill recomputes what the cache held
    assert b.response_text == a.response_text and b.token_policy_version.abs().sum() == 0
    assert b.group_id.tolist() == a.group_id.tolist() == [0, 0, 1, 1, 2, 2]


class NewWeightsAfterTheFirstSegment:
    """A mailbox that holds version 1 (perturbed weights) from the start: the second segment takes them."""

    def __init__(self, state):
        self.state, self.reads = state, 0

    def latest(self):
        self.reads += 1
        return 1, self.state


def test_a_generation_continues_on_weights_that_arrive_between_segments(tiny_model_dir, char_tokenizer):
    from transformers import AutoModelForCausalLM

    from rlkit.rollout.sampling import SamplingParams

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=6, min_new_tokens=6)  # no row ends early
    mailbox = NewWeightsAfterTheFirstSegment(state)
    with _rollout_group(tiny_model_dir, 2) as group:
        group.rollout.set_mailbox(mailbox)
        out = group.rollout.generate(_prompts(char_tokenizer), params)
        assert group.rollout.sampler_state()[0]["version"] == 1
    assert mailbox.reads == 2  # before segments 2 and 3 (the second read finds nothing newer)
    assert out.token_policy_version.tolist() == [[0, 0, 1, 1, 1, 1]] * 6
    assert out.policy_version.tolist() == [0] * 6  # a row's version is its first token's
    # The tokens after the switch were drawn from the new weights: their rollout log-probs are the perturbed
    # model's, recomputed here by teacher forcing (and not the old model's).
    for row in range(len(out)):
        prompt = out.prompt_ids[row][out.prompt_mask[row].bool()]
        ids = torch.cat([prompt, out.response_ids[row]]).unsqueeze(0)
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + 6)
        expected = logp[positions, out.response_ids[row]]
        torch.testing.assert_close(out.rollout_logprobs[row, 2:], expected[2:], atol=1e-4, rtol=0)
        assert (out.rollout_logprobs[row, :2] - expected[:2]).abs().max() > 1e-3  # the first segment: old weights


class SlowSegments(RolloutWorker):
    """Each segment of a partial rollout starts 80 ms late: updates land while a generation runs."""

    def _take_mailbox_weights(self):
        time.sleep(0.08)
        super()._take_mailbox_weights()


def test_partial_rollouts_take_weights_pushed_mid_generation(ray_cluster, tmp_path):
    cfg = async_config(tmp_path, "partial", 1, cluster={"backend": "ray", "threads_per_worker": 1},
                       rollout={"partial": True, "partial_segment": 1, "min_new_tokens": 4})
    with rlkit.Session(cfg, **FNS) as s:
        old = s.pipeline.group
        kwargs = RolloutWorker.kwargs_from_config(cfg.override({"model.path": str(s.model_path)}))
        old.close()
        s.pipeline.group = s.runtime.make_group({"rollout": RoleSpec(SlowSegments, kwargs=kwargs)}, old.pool)
        s.pipeline.group.rollout.set_mailbox(s.pipeline.mailbox)
        mixed = 0
        for _ in range(6):
            stats = s.step()
            versions = s.last_batch.token_policy_version
            assert torch.equal(s.last_batch.policy_version, versions[:, 0])
            assert bool((versions[:, 1:] >= versions[:, :-1]).all())  # never an older version later in a row
            assert int(versions.max()) <= s.policy_version - 1  # nothing newer than the trainer that learned it
            assert stats["async/staleness_max"] <= 1 and stats["async/token_staleness_mean"] <= 1
            mixed += int((versions.max(-1).values > versions.min(-1).values).any())
    assert mixed >= 2  # generations really continued on newer weights
