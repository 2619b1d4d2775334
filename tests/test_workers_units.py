"""Pure pieces of rlkit.workers and rlkit.monitor.stats: hand-computed values, no process group."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.batch import Batch
from rlkit.monitor.stats import device_peak_flops, measure, mfu, transformer_flops
from rlkit.workers.batching import (
    interleave_minibatches,
    last_token_index,
    local_minibatch_size,
    minibatch_order,
    sequence_inputs,
)
from rlkit.workers.optim import OptimConfig, lr_multiplier
from rlkit.workers.reward_model import bradley_terry_loss, check_pairs


def test_lr_multiplier_warmup_then_cosine_and_linear():
    kw = {"warmup_steps": 4, "total_steps": 12, "min_lr_ratio": 0.0}
    assert [lr_multiplier(s, schedule="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, schedule="cosine", **kw) == pytest.approx(1.0)
    assert lr_multiplier(8, schedule="cosine", **kw) == pytest.approx(0.5)  # half-way: cos(pi/2)
    assert lr_multiplier(12, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_multiplier(50, schedule="cosine", **kw) == pytest.approx(0.0)  # flat after the end
    assert lr_multiplier(6, schedule="linear", **kw) == pytest.approx(0.75)
    assert lr_multiplier(8, schedule="cosine", warmup_steps=4, total_steps=12, min_lr_ratio=0.2) == pytest.approx(0.6)
    assert lr_multiplier(100, schedule="constant", warmup_steps=0, total_steps=None) == 1.0


def test_optim_config_errors_name_the_field():
    with pytest.raises(ValueError, match="total_steps must be set"):
        OptimConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_schedule='step'"):
        OptimConfig(lr_schedule="step")
    section = {"lr": 0.5, "grad_clip": None, "mini_batch_size": 8, "betas": [0.8, 0.9]}  # extra keys ignored
    cfg = OptimConfig.from_section(section, warmup_steps=3)
    assert (cfg.lr, cfg.grad_clip, cfg.warmup_steps, cfg.betas) == (0.5, None, 3, (0.8, 0.9))


def test_minibatch_order_gives_each_rank_its_part_of_every_minibatch():
    # 8 rows, global mini-batches of 4 (rows 0-3, 4-7), 2 ranks: rank 0 takes 0,1 then 4,5.
    assert minibatch_order(8, 2, 4) == [0, 1, 4, 5, 2, 3, 6, 7]
    assert minibatch_order(8, 1, 4) == list(range(8))
    assert minibatch_order(12, 3, 6) == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]
    batch = Batch(scores=torch.arange(8.0), batch_size=[8])
    parts, _ = interleave_minibatches(batch, 2, 4).split(2)
    assert parts[0].scores.tolist() == [0, 1, 4, 5] and parts[1].scores.tolist() == [2, 3, 6, 7]
    with pytest.raises(ValueError, match="multiple of the number of ranks"):
        minibatch_order(8, 3, 4)
    with pytest.raises(ValueError, match="does not divide into mini-batches"):
        minibatch_order(10, 2, 4)
    assert local_minibatch_size(None, 2, 7) == 7 and local_minibatch_size(8, 2, 7) == 4


def test_sequence_inputs_trims_padding_columns_and_counts_positions():
    batch = Batch(
        prompt_ids=torch.tensor([[0, 0, 5, 6], [0, 7, 8, 9]]),
        prompt_mask=torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]]),
        response_ids=torch.tensor([[10, 11, 0, 0], [12, 0, 0, 0]]),
        response_mask=torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]),
        batch_size=[2],
    )
    ids, mask, positions, prompt_len = sequence_inputs(batch)
    # column 0 is padding in both prompts, columns 2-3 are padding in both responses
    assert prompt_len == 3
    assert ids.tolist() == [[0, 5, 6, 10, 11], [7, 8, 9, 12, 0]]
    assert mask.tolist() == [[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert positions.tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 3, 3]]
    assert last_token_index(batch, prompt_len).tolist() == [4, 3]


def test_bradley_terry_loss_by_hand():
    scores = torch.tensor([2.0, 0.0, -1.0, 1.0])  # pairs: (2, 0) right order, (-1, 1) wrong order
    mb = Batch(response_mask=torch.ones(4, 3), batch_size=[4])
    loss, metrics = bradley_terry_loss({"scores": scores}, mb, global_tokens=12.0, global_seqs=8.0)
    # share of a step with 4 pairs: (-log s(2) - log s(-2)) / 4
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0))) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"].item() == 0.5 and metrics["margin"].item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="even count"):
        check_pairs(Batch(response_mask=torch.ones(3, 2), batch_size=[3]), "reward.update")
    with pytest.raises(ValueError, match="same group_id"):
        check_pairs(Batch(group_id=torch.tensor([0, 1, 1, 2]), batch_size=[4]), "reward.update")


def test_flops_mfu_and_measure():
    # 2N + 2 L S H per token forward: N=1000, L=2, S=8, H=16 -> 2000 + 512 = 2512
    assert transformer_flops(1000, 2, 16, tokens=10, seq_len=8, backward=False) == 25120
    assert transformer_flops(1000, 2, 16, tokens=10, seq_len=8, backward=True) == 3 * 25120
    assert mfu(1e12, 2.0, 1e12) == 0.5 and mfu(1.0, 1.0, None) is None
    assert device_peak_flops(torch.device("cpu"), torch.float32) is None
    with measure(torch.device("cpu")) as m:
        torch.ones(1000).sum()
    stats = m.stats("actor/update", tokens=100, flops=1e6)
    assert stats["actor/update/tokens"] == 100 and stats["actor/update/seconds"] > 0
    assert stats["actor/update/host_rss_gb"] > 0 and stats["actor/update/cuda_peak_gb"] == 0
    assert "actor/update/mfu" not in stats  # no known peak on CPU
