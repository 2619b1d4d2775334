"""`rlkit train` and `rlkit plan` from the shell entry point (in-process `main`)."""

from __future__ import annotations

import json

from rlkit.cli import main


def test_plan_prints_the_best_mapping(capsys):
    assert main(["plan", "--algo", "ppo", "--set", "cluster.devices_per_node=2"]) == 0
    out = capsys.readouterr().out
    assert "best:" in out and "actor" in out and "critic" in out


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
