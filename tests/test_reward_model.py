"""Reward / cost models: score position, rule pairs, rule stand-in, and a training run that must rank pairs."""

from __future__ import annotations

import random

import pytest
import torch

from rlkit.batch import Batch
from rlkit.cluster import RoleSpec, WorkerGroup
from rlkit.config import Config
from rlkit.data import arithmetic_cost, arithmetic_reward, build_char_tokenizer
from rlkit.workers.batching import sequence_inputs
from rlkit.workers.reward_model import RewardModelWorker, RuleRewardWorker
from rlkit.workers.rm_training import RMConfig, candidate_responses, encode_pairs, pairwise_accuracy, rule_pairs, run_rm


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def test_rule_pairs_put_the_higher_scored_response_first():
    prompts, truths = ["12+30=", "45+45=", "70+7="], ["42", "90", "77"]
    for fn in (arithmetic_reward, arithmetic_cost):
        pairs = rule_pairs(prompts, truths, fn, seed=0)
        assert [p for p, _, _ in pairs] == prompts  # every prompt has candidates the rule tells apart
        for (prompt, high, low), truth in zip(pairs, truths):
            assert fn(*high[:1], truth, high[1]) > fn(*low[:1], truth, low[1])
    # the reward prefers exactly the reference answer followed by EOS
    assert all(high == (truth, True) for (_, high, _), truth in zip(rule_pairs(prompts, truths, arithmetic_reward, 1), truths))
    candidates = candidate_responses("42", random.Random(0))
    assert ("42", True) in candidates and ("42", False) in candidates and len(set(candidates)) == len(candidates)


def test_encode_pairs_layout_and_pairwise_accuracy(tokenizer):
    batch = encode_pairs(tokenizer, [("1+2=", ("3", True), ("4", True)), ("2+2=", ("4", True), ("4", False))],
                         max_prompt_len=8)
    eos = tokenizer.eos_token_id
    assert batch.group_id.tolist() == [0, 0, 1, 1]
    assert batch.response_mask.sum(-1).tolist() == [2, 2, 2, 1]  # no EOS on the last response
    assert batch.response_ids[0, 1].item() == eos and batch.response_text == ["3", "4", "4", "4"]
    accuracy, margin = pairwise_accuracy(torch.tensor([1.0, 0.0, -1.0, 2.0]))
    assert accuracy == 0.5 and margin == pytest.approx(-1.0)


def test_score_is_read_at_the_last_real_token(tiny_model_dir, tokenizer, tmp_path):
    from transformers import AutoModelForSequenceClassification

    pairs = [("12+3=", ("15", True), ("1", False)), ("9+9=", ("18", True), ("7777", True))]
    batch = encode_pairs(tokenizer, pairs, max_prompt_len=8)
    spec = {"reward": RoleSpec(RewardModelWorker, kwargs={"model": str(tiny_model_dir), "micro_batch_size": 4})}
    with WorkerGroup(None, spec, backend="local") as group:
        scores = group.reward.score(batch)
        group.reward.save_pretrained(tmp_path / "rm")
    assert scores.present_fields() == ["scores"] and scores.scores.shape == (4,)

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids, mask, positions, _ = sequence_inputs(batch)
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        per_token = model.score(hidden)[..., 0]  # (B, L)
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)  # index of the last 1 in each row
    torch.testing.assert_close(scores.scores, per_token[torch.arange(4), last], rtol=0, atol=1e-5)
    # and not at the padding after it: the rows' final columns differ from their last real token
    assert not torch.allclose(per_token[:, -1], per_token[torch.arange(4), last])


def test_scores_with_a_token_budget_equal_the_fixed_split(tiny_model_dir, tokenizer):
    """critic.max_tokens_per_micro_batch reaches the reward model's scoring: rows regrouped by length, in order."""
    pairs = [("12+3=", ("15", True), ("1", False)), ("9+9=", ("18", True), ("7777", True)),
             ("1+1=", ("2", True), ("22222", False))]
    batch = encode_pairs(tokenizer, pairs, max_prompt_len=8)
    cfg = Config.preset("arithmetic-tiny", model={"reward_model_path": str(tiny_model_dir)},
                        critic={"micro_batch_size": 2, "max_tokens_per_micro_batch": 12})
    kwargs = RewardModelWorker.kwargs_from_config(cfg)
    assert kwargs["max_tokens_per_micro_batch"] == 12
    fixed = {**kwargs, "max_tokens_per_micro_batch": 0}
    spec = {"budget": RoleSpec(RewardModelWorker, kwargs=kwargs), "fixed": RoleSpec(RewardModelWorker, kwargs=fixed)}
    with WorkerGroup(None, spec, backend="local") as group:
        budget, rows = group.budget.score(batch).scores, group.fixed.score(batch).scores
    assert not torch.equal(batch.response_mask.sum(-1), batch.response_mask.sum(-1)[0].expand(6))  # lengths differ
    torch.testing.assert_close(budget, rows, rtol=0, atol=1e-5)


def test_rule_reward_stands_in_for_the_reward_model(tiny_model_dir, tokenizer):
    texts = [("3", True), ("4", True), ("3", False)]
    eos = tokenizer.eos_token_id
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + ([eos] if e else []) for t, e in texts]
    width = max(map(len, rows))
    response_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    batch = Batch(
        prompt_ids=torch.full((3, 2), 9),
        prompt_mask=torch.ones(3, 2, dtype=torch.long),
        response_ids=response_ids,
        response_mask=(torch.arange(width) < torch.tensor([len(r) for r in rows])[:, None]).long(),
        ground_truth=["3", "3", "3"],
        batch_size=[3],
    )
    spec = {"reward": RoleSpec(RuleRewardWorker, kwargs={"fn": arithmetic_reward, "tokenizer_path": str(tiny_model_dir)})}
    with WorkerGroup(None, spec, backend="local") as group:
        assert group.reward.score(batch).scores.tolist() == [1.0, 0.0, 0.0]


@pytest.mark.slow
def test_reward_model_from_sft_ranks_held_out_pairs(sft_arithmetic, tmp_path):
    """The RLHF order: the reward model starts from the SFT policy (it knows arithmetic)."""
    cfg = Config.preset(
        "arithmetic-tiny",
        model={"path": str(sft_arithmetic.model_dir)},
        cluster={"backend": "local", "threads_per_worker": 1},
    )
    rm = RMConfig(steps=150, pairs_per_step=64, micro_batch_size=128, lr=3e-3, eval_pairs=256)
    result = run_rm(cfg, tmp_path / "rm", rm=rm, progress=False)
    print(f"reward model held-out pairwise accuracy: {result.accuracy:.1%}")
    assert result.accuracy >= 0.80, f"reward model ranks only {result.accuracy:.1%} of held-out pairs"
    assert run_rm(cfg, tmp_path / "rm", rm=rm, progress=False).cached


def test_cli_rm_trains_a_cost_model(tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from rlkit.cli import main

    argv = ["rm", "--cost", "--out", str(tmp_path / "cost"), "--steps", "2", "--pairs-per-step", "4", "--quiet",
            "--set", "cluster.backend=local", "--set", "cluster.threads_per_worker=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained cost model: held-out pairwise accuracy" in out and "model.cost_model_path" in out
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "cost" / "model").config.num_labels == 1
