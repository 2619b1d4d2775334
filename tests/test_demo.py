"""`rlkit demo` and the CLI: run in-process on the tiny model (a few seconds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rlkit.cli import main
from rlkit.config import Config
from rlkit.data.arithmetic import ArithmeticTask, arithmetic_reward
from rlkit.data.models import load_model_and_tokenizer
from rlkit.demo import sample_and_score


def test_sample_and_score_samples_scores_and_prints(tmp_path):
    lines = []
    result = sample_and_score(out_dir=tmp_path, num_prompts=64, show=5, print_fn=lines.append)
    out = "\n".join(lines)

    expected_prompts = [p["prompt"] for p in ArithmeticTask(digits=2, seed=0).problems(64, "eval")]
    assert result.prompts == expected_prompts
    assert len(result.responses) == len(result.rewards) == len(result.eos_seen) == 64
    truths = [str(eval(p[:-1])) for p in result.prompts]
    assert result.rewards == [arithmetic_reward(r, t, e) for r, t, e in zip(result.responses, truths, result.eos_seen)]
    assert result.accuracy == pytest.approx(sum(result.rewards) / 64)
    # responses are bounded by the preset's max_new_tokens (6 for arithmetic-tiny)
    assert all(len(r) <= 6 for r in result.responses)

    assert "prompt" in out and "reward" in out and "accuracy:" in out
    assert repr(result.prompts[0]) in out and repr(result.prompts[5]) not in out  # show=5 rows
    assert f"accuracy: {result.accuracy:.3f}" in out
    # the saved model is the one that was sampled: it loads through the real path
    assert result.model_dir == str(tmp_path / "model")
    load_model_and_tokenizer(result.model_dir)


def test_sample_and_score_is_deterministic_and_greedy_option(tmp_path):
    cfg = Config.preset("arithmetic-tiny")
    a = sample_and_score(cfg, out_dir=tmp_path / "a", num_prompts=16, print_fn=None)
    b = sample_and_score(cfg, out_dir=tmp_path / "b", num_prompts=16, print_fn=None)
    assert a.responses == b.responses and a.rewards == b.rewards
    greedy = sample_and_score(cfg.override({"rollout.temperature": 0.0}), out_dir=tmp_path / "a", num_prompts=16, print_fn=None)
    assert greedy.responses != a.responses  # sampling at temperature 1 differs from the argmax


def test_sample_and_score_on_a_given_model_and_prompt_file(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"q": "1+1=", "a": "2"}\n{"q": "2+2=", "a": 4}\n')
    cfg = Config.preset("arithmetic-tiny").override(
        {"model.path": str(tiny_model_dir), "data.source": str(prompts), "data.prompt_key": "q", "data.answer_key": "a"}
    )
    result = sample_and_score(cfg, out_dir=tmp_path / "unused", num_prompts=64, print_fn=None)
    assert sorted(result.prompts) == ["1+1=", "2+2="] and result.model_dir == str(tiny_model_dir)
    assert not (tmp_path / "unused").exists()


def test_cli_demo_and_tiny_model(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path / "demo"), "--num-prompts", "8", "--show", "3"]) == 0
    out = capsys.readouterr().out
    assert "accuracy:" in out and "(5 more rows)" in out

    assert main(["tiny-model", "llama-tiny", str(tmp_path / "llama")]) == 0
    assert "saved llama-tiny (191,360 parameters, 103 tokens)" in capsys.readouterr().out
    model, _ = load_model_and_tokenizer(tmp_path / "llama")
    assert model.config.model_type == "llama"


def test_cli_errors_are_short_and_named(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    code = main(["sample", "--out", str(tmp_path), "--set", f"data.source={missing}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "rlkit sample: error:" in err and "missing.jsonl" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["tiny-model", "gpt-huge", str(tmp_path)])


def test_cli_help_is_fast_to_import():
    # `rlkit --help` must not import torch/transformers (they take seconds); checked in a fresh interpreter
    code = "import sys; from rlkit.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_demo_shows_the_accuracy_rising(sft_arithmetic):
    """`rlkit demo`'s pipeline (run_demo) on the session's SFT warm-up: cached, then GRPO raises the accuracy."""
    from rlkit.demo import DEMO_STEPS, run_demo

    lines: list[str] = []
    cfg = Config.preset("arithmetic-rl", cluster={"backend": "local", "threads_per_worker": 1})
    result = run_demo(cfg, out_dir=sft_arithmetic.demo_dir, print_fn=lines.append)
    out = "\n".join(lines)
    print(out)
    assert "(cached)" in out  # the fixture's SFT, found where the demo looks for it
    assert len(result.history) == DEMO_STEPS
    assert result.accuracy_after >= result.accuracy_before + 0.10
    assert f"{result.accuracy_before:.1%} -> {result.accuracy_after:.1%}" in out
    assert "stats.jsonl" in out and "dashboard.html" in out
