"""`rlkit train` and `rlkit plan` from the shell entry point (in-process `main`)."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest

from rlkit.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_plan_commands() -> list[str]:
    """The `rlkit plan` lines of the README, without their comments."""
    lines = [line.split("#")[0].strip() for line in README.read_text().splitlines()]
    return [line for line in lines if line.startswith("rlkit plan")]


def _plan_error(capsys, *argv: str) -> str:
    """Run `rlkit plan ARGV`, expecting the one-line error the CLI prints (exit 2, no traceback)."""
    assert main(["plan", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err


def test_plan_prints_the_best_mapping(capsys):
    assert main(["plan", "--algo", "ppo", "--set", "cluster.devices_per_node=2"]) == 0
    out = capsys.readouterr().out
    assert "best:" in out and "actor" in out and "critic" in out


@pytest.mark.parametrize("command", _readme_plan_commands())
def test_the_readme_plan_commands_print_a_plan(command, capsys):
    assert main(shlex.split(command)[1:]) == 0
    out = capsys.readouterr().out
    assert "best:" in out and "ranking (" in out


def test_the_old_readme_command_on_the_tiny_config_plans_all_128_gpus(capsys):
    # used to fail with "min() arg is an empty sequence": 64 sequences per step cannot keep 128 devices busy
    # with one model, so the search had no strategy for a model alone on all of them
    assert main(["plan", "--algo", "ppo", "--cluster", "128xA100-80GB"]) == 0
    out = capsys.readouterr().out
    best = re.search(r"best: (\S+(?: \| \S+)*) ", out).group(1)
    assert sum(int(group.split(":")[1]) for group in best.split(" | ")) == 128, best


def test_plan_of_a_13b_model_on_16_a100s_is_in_seconds_and_gib(capsys):
    assert main(["plan", "--model", "13b", "--algo", "ppo", "--cluster", "16xA100-80GB"]) == 0
    out = capsys.readouterr().out
    assert "1024 prompts x 1, prompt 1024 + response 1024 tokens" in out and "actor=llama-13b" in out
    seconds, unit = re.search(r"best: .* iteration ([\d.]+) (ms|s),", out).groups()
    assert unit == "s" and float(seconds) > 1
    # generation runs on the whole gathered bf16 weights: 13.0e9 params x 2 bytes = 24.2 GiB on one device
    peak = float(re.search(r"peak ([\d.]+) GiB per device", out).group(1))
    assert 13.0e9 * 2 / 2**30 < peak <= 0.9 * 80


def test_plan_workload_flags_replace_the_papers(capsys):
    assert main(["plan", "--model", "7b", "--algo", "grpo", "--cluster", "8xH100", "--prompts", "64", "--n", "8",
                 "--prompt-len", "256", "--response-len", "512"]) == 0
    assert "64 prompts x 8, prompt 256 + response 512 tokens" in capsys.readouterr().out


def test_plan_errors_are_one_line_and_name_what_was_wrong(capsys):
    start = time.perf_counter()
    err = _plan_error(capsys, "--model", "nope-xyz", "--cluster", "8xH100")
    assert time.perf_counter() - start < 30  # no hub retries (the CLI itself takes a few seconds to import)
    assert "--model" in err and "'nope-xyz' is not a Llama size key" in err and "local cache" in err
    err = _plan_error(capsys, "--cluster", "2xA100-80GB", "--model", "llama-70b")
    assert "does not fit on 2 x A100-80GB" in err and "GiB per device" in err and "missing" in err
    assert "--cluster" in _plan_error(capsys, "--cluster", "lots-of-gpus")
    err = _plan_error(capsys, "--algo", "grpo", "--cluster", "128xA100-80GB", "--set", "algo.kl_coef=0")
    assert "keeps all 128 x A100-80GB busy" in err and "64 sequences per step" in err
    assert "--samples-per-prompt" in _plan_error(capsys, "--algo", "grpo", "--model", "7b", "--cluster", "8xH100",
                                                 "--n", "1")


def test_plan_rejects_a_bad_override(capsys):
    assert main(["plan", "--set", "actor.lr=-1"]) == 2
    assert "actor.lr" in capsys.readouterr().err


def test_train_writes_a_run_directory(tmp_path, capsys):
    code = main([
        "train", "--preset", "arithmetic-tiny", "--steps", "1", "--no-eval",
        "--set", "cluster.backend=local", "--set", f"logging.run_dir={tmp_path}", "--set", "logging.run_name=cli",
        "--set", "rollout.prompts_per_step=4", "--set", "actor.mini_batch_size=16",
    ])
    assert code == 0
    run = tmp_path / "cli"
    lines = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1] and "time/learn" in lines[0]
    assert (run / "dashboard.html").stat().st_size > 10_000
    assert str(run) in capsys.readouterr().out


def test_train_saves_every_n_steps_and_resumes_and_forks(tmp_path, capsys):
    common = ["--steps", "2", "--no-eval"]
    assert main(["train", "--preset", "arithmetic-tiny", *common, "--set", "cluster.backend=local",
                 "--set", f"logging.run_dir={tmp_path}", "--set", "logging.run_name=long",
                 "--set", "logging.save_every=2", "--set", "rollout.prompts_per_step=4",
                 "--set", "actor.mini_batch_size=16"]) == 0
    assert (tmp_path / "long" / "checkpoints" / "latest").read_text().strip() == "step-000002"
    assert main(["train", "--resume", str(tmp_path / "long"), *common]) == 0
    assert "resumed" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (tmp_path / "long" / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert main(["train", "--resume", str(tmp_path / "long"), "--fork", "--steps", "1", "--no-eval",
                 "--set", "actor.lr=1e-4"]) == 0
    fork = json.loads((tmp_path / "long-fork4" / "run.json").read_text())
    assert fork["parent"]["step"] == 4
    with pytest.raises(SystemExit, match="--set"):
        main(["train", "--resume", str(tmp_path / "long"), "--preset", "arithmetic-tiny"])
