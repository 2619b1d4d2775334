"""Tests for run directories, W&B offline logging and reading, and `rlkit.compare`."""

from __future__ import annotations

import json
import math

import pytest
import torch

import rlkit
from rlkit.monitor.compare import ConfigDiff, RunData, compare, flatten, load_run
from rlkit.monitor.runlog import RunLog, read_config, read_jsonl, read_stats
from rlkit.monitor.wandb_read import find_wandb_file, has_exit_record, iter_record_payloads, read_offline_run

CONFIG_A = {"algo": {"name": "grpo", "kl_coef": 0.1, "clip": [0.2, 0.28]}, "actor": {"lr": 1e-5}, "seed": 0}
CONFIG_B = {"algo": {"name": "ppo", "kl_coef": 0.1, "clip": [0.2, 0.28]}, "actor": {"lr": 1e-5}, "seed": 0,
            "critic": {"lr": 1e-4}}


def reward_at(run: str, step: int) -> float:
    return {"a": 0.1, "b": 0.2}[run] * step


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory):
    """An rlkit run directory logged to W&B offline: 4 steps, a NaN KL at step 1, a samples table at step 3."""
    root = tmp_path_factory.mktemp("wandb_run")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_MODE", "offline")
        env.setenv("WANDB_DIR", str(root))
        env.setenv("WANDB_SILENT", "true")
        for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            env.setenv(name, str(root / name.lower()))
        with RunLog(root / "a", CONFIG_A, wandb=True, wandb_project="rlkit-test", wandb_mode="offline") as log:
            for step in range(4):
                log.log({"step": step, "reward/mean": reward_at("a", step),
                         "actor/kl": float("nan") if step == 1 else 0.01 * step, "time/step": torch.tensor(1.5)})
            log.log_samples([{"prompt": "1+2=", "response": "3", "score": 1.0},
                             {"prompt": "3+4=", "response": "17", "score": 0.0}], step=3)
    return root / "a"


@pytest.fixture
def plain_run(tmp_path):
    with RunLog(tmp_path / "b", CONFIG_B) as log:
        for step in range(3):
            log.log({"reward/mean": reward_at("b", step), "critic/vf_loss": 1.0 / (step + 1)}, step=step)
    return tmp_path / "b"


# ------------------------------------------------------------------ run directory


def test_runlog_writes_config_stats_samples(tmp_path):
    log = RunLog(tmp_path / "run", CONFIG_A)
    assert log.log({"reward/mean": torch.tensor(0.5), "n": torch.tensor(3)}) == {"step": 0, "reward/mean": 0.5, "n": 3.0}
    log.log({"step": 5, "reward/mean": 0.75})
    log.log({"reward/mean": 1.0})  # continues after the last step
    rows = log.log_samples([{"prompt": "p", "response": "r", "score": 1}])
    log.close()
    assert read_config(tmp_path / "run") == CONFIG_A
    assert read_stats(tmp_path / "run") == [
        {"step": 0, "reward/mean": 0.5, "n": 3.0},
        {"step": 5, "reward/mean": 0.75},
        {"step": 6, "reward/mean": 1.0},
    ]
    assert rows == [{"step": 6, "prompt": "p", "response": "r", "score": 1}]
    assert read_jsonl(tmp_path / "run" / "samples.jsonl") == rows
    assert json.loads((tmp_path / "run" / "run.json").read_text())["name"] == "run"
    with pytest.raises(RuntimeError, match="closed"):
        log.log({"reward/mean": 0.0})


def test_runlog_takes_a_config_object_and_a_batch(tmp_path):
    from rlkit.batch import Batch

    cfg = rlkit.Config.preset("arithmetic-tiny")
    batch = Batch.from_prompts(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long), prompt_text=["q"]).replace(
        response_ids=torch.tensor([[3, 4]]), response_mask=torch.tensor([[1, 0]]), response_text=["a"],
        scores=torch.tensor([0.5]))
    with RunLog(tmp_path / "cfg", cfg) as log:
        (row,) = log.log_samples(batch, step=2)
    assert read_config(tmp_path / "cfg") == cfg.to_dict()
    assert row == {"step": 2, "row": 0, "prompt": "q", "response": "a", "score": 0.5, "advantage": None, "length": 1}


def test_read_stats_skips_a_cut_last_line_only(tmp_path):
    path = tmp_path / "stats.jsonl"
    path.write_text('{"step": 0, "x": NaN}\n{"step": 1, "x": 2}\n{"step": 2, "x"')
    rows = read_stats(tmp_path)
    assert [r["step"] for r in rows] == [0, 1] and math.isnan(rows[0]["x"])
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"stats.jsonl:2"):
        read_stats(tmp_path)


# ------------------------------------------------------------------ W&B offline


def test_offline_wandb_run_is_written(offline_run):
    info = json.loads((offline_run / "run.json").read_text())
    assert info["wandb"]["mode"] == "offline"
    wandb_file = find_wandb_file(offline_run)
    # complete on disk once RunLog.close() returned (wandb itself writes the file in the background)
    assert has_exit_record(wandb_file)
    assert wandb_file.parent == offline_run / info["wandb"]["dir"]
    assert wandb_file.name == f"run-{info['wandb']['id']}.wandb"
    tables = list(wandb_file.parent.glob("files/media/table/samples_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["step", "prompt", "response", "score"]
    assert table["data"] == [[3, "1+2=", "3", 1.0], [3, "3+4=", "17", 0.0]]


def _history_without_clock(run) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("_runtime", "_timestamp")} for row in run.history]


def test_both_offline_readers_agree(offline_run, monkeypatch):
    by_records = read_offline_run(offline_run, reader="records")
    assert read_offline_run(offline_run).history == by_records.history  # auto = records when it works

    def broken(path):
        raise ValueError("a schema this reader does not know")

    # auto falls back to wandb's own reader (`wandb leet inspect --json`, a subprocess)
    monkeypatch.setattr("rlkit.monitor.wandb_read._read_records", broken)
    by_leet = read_offline_run(offline_run)
    with pytest.raises(ValueError, match="schema"):
        read_offline_run(offline_run, reader="records")
    assert by_records.config == by_leet.config == CONFIG_A
    assert by_records.name == by_leet.name == "a"
    records, leet = _history_without_clock(by_records), _history_without_clock(by_leet)
    assert len(records) == len(leet) == 4
    for a, b in zip(records, leet):
        assert a.keys() == b.keys()
        for key in a:
            same_nan = isinstance(a[key], float) and math.isnan(a[key]) and math.isnan(b[key])
            assert same_nan or a[key] == b[key], key
    assert [row["reward/mean"] for row in records] == [reward_at("a", s) for s in range(4)]
    assert [row["_step"] for row in records] == [0, 1, 2, 3]
    assert math.isnan(records[1]["actor/kl"])


def test_record_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"not a wandb log")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        list(iter_record_payloads(bad))
    with pytest.raises(FileNotFoundError, match="holds no W&B run"):
        find_wandb_file(tmp_path / "..")


# ------------------------------------------------------------------ compare


def test_relative_run_dir_lands_under_the_callers_working_directory(offline_run, tmp_path, monkeypatch):
    # offline_run left this process's W&B service running (WANDB_SERVICE in os.environ): it resolves
    # paths against the directory pytest started in, so a relative dir must be made absolute first.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_SILENT", "true")
    with RunLog("relative", CONFIG_A, wandb=True, wandb_project="rlkit-test", wandb_mode="offline") as log:
        log.log({"reward/mean": 0.5})
    wandb_file = find_wandb_file(tmp_path / "relative")
    assert has_exit_record(wandb_file)


def test_compare_offline_wandb_with_plain_run_dir(offline_run, plain_run, tmp_path):
    wandb_dir = find_wandb_file(offline_run).parent  # .../wandb/offline-run-*
    cmp = rlkit.compare([wandb_dir, plain_run])
    assert [run.source for run in cmp.runs] == ["wandb-offline", "rlkit"]
    assert [run.name for run in cmp.runs] == ["a", "b"]
    assert cmp.metrics == ["reward/mean", "actor/kl", "critic/vf_loss", "time/step"]  # headline order
    a, b = cmp.runs
    assert a.series("reward/mean") == ([0.0, 1.0, 2.0, 3.0], [reward_at("a", s) for s in range(4)])
    assert b.series("reward/mean") == ([0.0, 1.0, 2.0], [reward_at("b", s) for s in range(3)])
    assert cmp.final() == {
        "a": {"reward/mean": pytest.approx(0.3), "actor/kl": 0.03, "critic/vf_loss": None, "time/step": 1.5},
        "b": {"reward/mean": pytest.approx(0.4), "actor/kl": None, "critic/vf_loss": pytest.approx(1 / 3),
              "time/step": None},
    }
    assert cmp.config_diff.to_dict() == {"algo.name": {"a": "grpo", "b": "ppo"}, "critic.lr": {"a": None, "b": 1e-4}}
    # the figure: one subplot per metric, one line per run that logged it
    lines = {(t.name, t.xaxis): list(t.y) for t in cmp.figure.data}
    assert lines[("a", "x")] == [reward_at("a", s) for s in range(4)]
    assert lines[("b", "x")] == [reward_at("b", s) for s in range(3)]
    assert ("b", "x2") not in lines and ("a", "x3") not in lines
    assert sum(t.showlegend for t in cmp.figure.data) == 2
    page = cmp.write_html(tmp_path / "cmp.html").read_text()
    assert "algo.name" in page and "&#x27;ppo&#x27;" in page and "Plotly.newPlot(" in page


def test_compare_metric_choice_and_errors(offline_run, plain_run):
    cmp = compare([plain_run, plain_run], metrics="critic/vf_loss")
    assert [run.name for run in cmp.runs] == ["b", "b (2)"]
    assert cmp.metrics == ["critic/vf_loss"] and len(cmp.config_diff) == 0
    assert str(cmp.config_diff) == "configs are identical"
    with pytest.raises(ValueError, match=r"\['eval/accuracy'\] were logged by none.*reward/mean"):
        compare([plain_run], metrics=["eval/accuracy"])
    with pytest.raises(FileNotFoundError, match="neither an rlkit run directory"):
        load_run(plain_run / "missing")
    # an rlkit run directory with W&B on is read from its stats.jsonl (no W&B reader needed)
    assert load_run(offline_run).source == "rlkit"


def test_config_diff_and_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    runs = [RunData("x", "rlkit", "", config={"a": 1, "t": (1, 2), "s": "1"}),
            RunData("y", "rlkit", "", config={"a": 1.0, "t": [1, 2], "s": 1})]
    diff = ConfigDiff.of(runs)
    assert diff.keys == ["s"]  # 1 == 1.0 and (1, 2) == [1, 2] by value; "1" != 1
    assert "<code>s</code>" in diff._repr_html_()
