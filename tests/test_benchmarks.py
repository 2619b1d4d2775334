"""The benchmark scripts' code paths on CPU (their figures are in BENCHMARKS.md, never asserted as timings)."""

from __future__ import annotations

import pytest

from benchmarks import gpu
from benchmarks.compute_floor import ModelShape


def test_gpu_script_runs_its_whole_path_on_cpu(tmp_path, capsys):
    out = gpu.main(["--shape", "tiny", "--device", "cpu", "--gen-batches", "4,8", "--gen-tokens", "8",
                    "--train-batch", "2", "--train-tokens", "32", "--repeats", "1", "--workdir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert printed.count("GPU_JSON ") == 1 and "policy update:" in printed and "weight sync (gathered)" in printed
    assert 0 < out["train"]["mfu"] < 1
    modes = [(g["batch"], g["mode"]) for g in out["generate"]]
    assert modes == [(4, "per-layer"), (8, "per-layer"), (8, "gathered")]
    for g in out["generate"]:
        assert 0 < g["tokens"] <= g["batch"] * g["new_tokens"]
        # > 0 and finite only: on CPU the tiny model's weights stay in cache, so a decode step can beat the
        # DRAM-bandwidth roofline (1.12 was measured once the sampler stopped costing a draw per vocab entry)
        assert 0 < g["of_roofline"] < float("inf")
    # the gathered sync materialises every parameter once: its bytes are the model's (tied embedding once)
    assert out["sync"]["mode"] == "gathered" and out["sync"]["bytes"] == out["param_bytes"]


def test_decode_roofline_counts_weights_and_the_growing_kv_cache():
    shape = ModelShape(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, ffn=16, vocab=10)
    # per position: K and V, 2 layers, 1 KV head of 4 values, 2 bytes = 32 bytes
    # 3 steps over batch 2 from a 5-token prompt: weights 3 x 100, KV 2 x (5 + 6 + 7) x 32
    seconds = gpu.decode_roofline_seconds(shape, 100, batch=2, prompt_len=5, new_tokens=3, dtype_bytes=2,
                                          bandwidth=1.0)
    assert seconds == pytest.approx(3 * 100 + 2 * 18 * 32)


def test_micro_script_times_the_three_calls(tmp_path, capsys):
    from benchmarks import micro

    out = micro.main(["--size", "1m", "--threads", "1", "--repeats", "1", "--workdir", str(tmp_path)])
    assert capsys.readouterr().out.count("MICRO_JSON ") == 1
    (row,) = out["threads"].values()
    assert set(row) == {"forward", "forward_backward", "decode_step"}
    for best, median in row.values():
        assert 0 < best <= median


@pytest.mark.slow
def test_prepare_overlap_smoke_times_both_modes_on_both_placements(capsys):
    from benchmarks import prepare_overlap

    out = prepare_overlap.main(["--smoke"])
    assert capsys.readouterr().out.count("OVERLAP_JSON ") == 1
    rows = {r["placement"]: r for r in out["rows"]}
    assert rows["split"]["groups"] == [["actor"], ["ref", "critic"]]
    assert rows["colocate"]["groups"] == [["actor", "ref", "critic"]]
    for r in rows.values():
        assert all(len(r["laps"][k]) == 1 for k in ("old_logprobs", "ref_logprobs", "values", "concurrent"))
        assert r["sequential"] == pytest.approx(r["old_logprobs"] + r["ref_logprobs"] + r["values"])
        assert 0 < r["process_bound"] <= r["sequential"] and r["concurrent"] > 0


def test_packing_lora_workload_has_varied_lengths_in_range():
    import torch

    from benchmarks.packing_lora import response_lengths, varied_batch
    from rlkit.batch import Batch

    lengths = response_lengths(32, 8, 128)
    assert lengths == response_lengths(32, 8, 128) and min(lengths) >= 8 and max(lengths) <= 128
    assert max(lengths) > 4 * min(lengths)  # the padding the knobs remove
    prompts = Batch(prompt_ids=torch.ones(8, 3, dtype=torch.long), prompt_mask=torch.ones(8, 3, dtype=torch.long),
                    batch_size=[8])
    batch = varied_batch(prompts, lengths, vocab=100, samples=4)
    assert batch.response_mask.sum(-1).tolist() == lengths
    assert (batch.response_ids[batch.response_mask == 0] == 0).all()


def test_realistic_padding_fraction_counts_computed_positions():
    from benchmarks.realistic import padding_stats

    # 2 rows x 10 columns holding 15 real tokens, then 1 row of 5 real tokens: 25 positions, 5 of them padding
    assert padding_stats([(2, 10, 15), (1, 5, 5)]) == {"padding_frac": 0.2, "computed_tokens": 25,
                                                       "real_tokens": 20, "micro_batches": 2}
    assert padding_stats([])["padding_frac"] == 0.0


def test_realistic_rlkit_micro_batches_are_planned_and_trimmed_as_the_actor_does():
    import torch

    from benchmarks.realistic import rlkit_micro_batch_shapes
    from rlkit.batch import Batch

    # 3 rows: prompts of 1, 3, 2 real tokens (left-padded to 4), responses of 2, 1, 4 real tokens (right-padded to 5)
    prompt_mask = torch.tensor([[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 0]])
    batch = Batch(prompt_ids=torch.ones(3, 4, dtype=torch.long), prompt_mask=prompt_mask,
                  response_ids=torch.ones(3, 5, dtype=torch.long), response_mask=response_mask, batch_size=[3])
    # rows of 2: rows 0-1 trimmed to prompt columns 1-3 + response columns 0-1 (width 5, 3 + 4 real tokens),
    # row 2 to 2 + 4 columns
    assert rlkit_micro_batch_shapes(batch, rows=2, budget=0, packed=False) == [(2, 5, 7), (1, 6, 6)]
    # a budget of 12 tokens: longest first (row 2: 6 tokens, then rows 1 and 0: 4 and 3), 2 x 6 = 12 fits,
    # a third row would cost 3 x 6; the last row alone. Trimmed widths: rows 2 and 1 -> 3 + 4, row 0 -> 1 + 2
    assert rlkit_micro_batch_shapes(batch, rows=2, budget=12, packed=False) == [(2, 7, 10), (1, 3, 3)]
    # packed: every real token once
    assert rlkit_micro_batch_shapes(batch, rows=2, budget=100, packed=True) == [(1, 13, 13)]


def test_realistic_workload_runs_both_sides_through_the_harness(tmp_path, capsys):
    """The realistic path end to end at a tiny size: a tiny chat-template model standing in for SmolLM2,
    1 step of 2 prompts x 2 samples of at most 6 tokens; TRL's arm only where TRL is installed (CI has none)."""
    import importlib.util
    import json

    from benchmarks import harness
    from rlkit.data import save_tiny_model

    model = tmp_path / "tiny"
    save_tiny_model("qwen2-tiny", model, seed=0)
    arms = ["rlkit:local:1"] + (["trl"] if importlib.util.find_spec("trl") else [])
    out = tmp_path / "out.json"
    code = harness.main(["compare", "--size", "smollm2", "--model", str(model), "--arms", ",".join(arms),
                         "--rounds", "1", "--steps", "1", "--warmup", "0", "--prompts", "2", "--samples", "2",
                         "--micro-batch", "2", "--max-new-tokens", "6", "--workdir", str(tmp_path), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "prompts: identical on every run" in printed
    raw = json.loads(out.read_text())["raw"]["results"]
    for arm in arms:
        (record,) = raw[arm]
        (step,) = record["steps"]
        assert 4 <= step["gen_tokens"] <= 4 * 6  # 4 samples, each 1..6 tokens
        extra = step["extra"]
        # the trainer's micro-batches hold every prompt and generated token once: two counts that must agree
        assert extra["real_tokens"] == step["prompt_tokens"] + step["gen_tokens"]
        assert extra["computed_tokens"] >= extra["real_tokens"] and 0 <= extra["padding_frac"] < 1
        assert record["peak_rss_tree_mb"] >= record["peak_rss_self_mb"] * 0.5 > 0


def test_async_pipeline_arm_reports_the_pipeline_measurements(tmp_path):
    import math

    import rlkit
    from benchmarks.async_pipeline import run_arm

    cfg = rlkit.Config.preset("arithmetic-tiny", rollout={"prompts_per_step": 4, "n": 2, "max_new_tokens": 3,
                                                         "async_steps": 1},
                              actor={"mini_batch_size": 8, "micro_batch_size": 8}, critic={"micro_batch_size": 8},
                              cluster={"backend": "local", "threads_per_worker": 1},
                              logging={"run_dir": str(tmp_path), "run_name": "arm", "dashboard": False})
    r = run_arm(cfg, steps=4, every=2)
    assert len(r["accuracy"]) == 3 and len(r["reward"]) == 4  # evaluated at 0, 2 and 4 steps
    assert r["staleness"] == 1.0  # steps 3-4: one version behind
    assert r["step"] > 0 and 0 <= r["trainer_idle"] <= 1 and 0 <= r["rollout_idle"] <= 1
    assert not math.isnan(r["wait"])
