"""SFT: data encoding and loss by hand, errors naming the row, and a tiny run that must learn."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.batch import Batch
from rlkit.config import Config
from rlkit.workers.sft import SFTConfig, encode_sft, fingerprint, run_sft, sft_loss


@pytest.fixture(scope="module")
def tokenizer():
    from rlkit.data import build_char_tokenizer

    return build_char_tokenizer()


def test_encode_sft_layout(tokenizer):
    batch = encode_sft(tokenizer, ["1+2=", "10+20="], ["3", "30"], max_prompt_len=16, max_response_len=8)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert batch.prompt_ids.tolist() == [[pad, pad] + ids("1+2="), ids("10+20=")]  # left-padded
    assert batch.response_ids.tolist() == [ids("3") + [eos, pad], ids("30") + [eos]]  # EOS, then right-padded
    assert batch.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch.ground_truth == ["3", "30"]


def test_encode_sft_errors_name_the_row(tokenizer):
    with pytest.raises(ValueError, match="row 17 .*empty response"):
        encode_sft(tokenizer, ["1+2=", "3+4="], ["3", ""], max_prompt_len=16, max_response_len=8, row_ids=[4, 17])
    with pytest.raises(ValueError, match="row 1 has a 6-token response .* max_response_len=4"):
        encode_sft(tokenizer, ["1+2=", "3+4="], ["3", "77777"], max_prompt_len=16, max_response_len=4)


def test_sft_loss_is_the_masked_nll_share():
    logprobs = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.8, 0.1, 0.1]]))  # last two of row 1: padding
    mb = Batch(response_mask=torch.tensor([[1, 1, 1], [1, 0, 0]]), batch_size=[2])
    loss, metrics = sft_loss({"logprobs": logprobs}, mb, global_tokens=8.0, global_seqs=4.0)
    nll = -(math.log(0.5) + math.log(0.25) + math.log(0.9) + math.log(0.8))
    assert loss.item() == pytest.approx(nll / 8.0, rel=1e-6)  # normalised by the step's 8 tokens, not these 4
    assert metrics["nll"].item() == pytest.approx(nll / 4, rel=1e-6)
    assert metrics["token_accuracy"].item() == pytest.approx(0.5)  # 0.9 and 0.8 are above 1/2


def test_fingerprint_follows_what_decides_the_result():
    cfg = Config.preset("arithmetic-tiny")
    assert fingerprint(cfg, SFTConfig()) == fingerprint(Config.preset("arithmetic-tiny"), SFTConfig())
    assert fingerprint(cfg, SFTConfig(steps=7)) != fingerprint(cfg, SFTConfig())
    assert fingerprint(cfg.override({"data.digits": 1}), SFTConfig()) != fingerprint(cfg, SFTConfig())
    # cluster layout and logging do not change the result
    assert fingerprint(cfg.override({"logging.run_name": "x"}), SFTConfig()) == fingerprint(cfg, SFTConfig())


@pytest.mark.slow
def test_sft_teaches_arithmetic_and_is_cached(sft_arithmetic):
    """The fixture ran SFT from scratch (conftest `sft_arithmetic`); check what it reached, then the cache."""
    run, result = sft_arithmetic, sft_arithmetic.result
    print(f"SFT exact match: {result.exact_match_before:.1%} -> {result.exact_match:.1%}")
    assert not result.cached
    assert result.exact_match_before <= 0.05
    assert result.exact_match >= 0.30, f"SFT reached only {result.exact_match:.1%} exact match"
    assert (result.model_dir / "config.json").is_file() and (result.model_dir / "tokenizer_config.json").is_file()

    again = run_sft(run.cfg, run.out_dir, sft=run.sft, progress=False)
    assert again.cached and again.model_dir == result.model_dir and again.exact_match == result.exact_match

    # the exported folder is the starting policy of RL: it loads and answers as the eval said
    from rlkit.data import arithmetic_reward, load_model_and_tokenizer, load_prompt_split
    from rlkit.workers.stage import greedy_answers

    model, tokenizer = load_model_and_tokenizer(result.model_dir)
    rows = load_prompt_split(run.cfg.data, "eval", num_rows=run.sft.eval_size)
    texts, eos = greedy_answers(
        model, tokenizer, list(rows["prompt"]), run.cfg.data.max_prompt_len, max_new_tokens=run.cfg.rollout.max_new_tokens
    )
    accuracy = sum(arithmetic_reward(t, g, e) for t, g, e in zip(texts, rows["ground_truth"], eos)) / len(texts)
    assert accuracy == pytest.approx(result.exact_match)


def test_cli_sft_runs_and_reuses_its_folder(tmp_path, capsys):
    from rlkit.cli import main

    argv = ["sft", "--out", str(tmp_path / "sft"), "--steps", "2", "--batch-size", "8", "--micro-batch-size", "4",
            "--quiet", "--set", "cluster.backend=local", "--set", "cluster.threads_per_worker=1"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "exact match: " in first and str(tmp_path / "sft" / "model") in first
    assert (tmp_path / "sft" / "model" / "model.safetensors").is_file()
    assert main(argv) == 0
    assert "cached:" in capsys.readouterr().out
