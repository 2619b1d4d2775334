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
        assert 0 < g["of_roofline"] < 1
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
