"""Every notebook in notebooks/ executes top to bottom in a fresh kernel, as CI would run it.

The notebooks are committed with outputs stripped (tools/strip_notebooks.py); here each one runs
with nbclient in the venv's `python3` kernel, with its working directory in a temporary folder (so
`runs/` lands there), and a few outputs that a reader relies on are checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 600  # seconds per cell: a loaded 2-core CI box can be 5x slower than a laptop
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def kernel_env(monkeypatch) -> None:
    """The kernel inherits this process's environment: make `import rlkit` work and stay offline."""
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + (os.pathsep + path if path else ""))
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("WANDB_MODE", "offline"),
                       ("TOKENIZERS_PARALLELISM", "false"), ("RAY_AUTH_MODE", "disabled"),
                       ("RLKIT_NOTEBOOK_STEPS", "1")):  # 07_real_model: one step of the real model, not 30
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # the kernel starts its own W&B service


def execute(path: Path, workdir: Path, monkeypatch):
    """Run the notebook at `path` with cwd `workdir`; returns the executed notebook (also saved there)."""
    import nbformat
    from nbclient import NotebookClient

    kernel_env(monkeypatch)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        # Keep the executed copy for debugging a failure (the error output names the cell).
        nbformat.write(nb, workdir / path.name)
    return nb


def outputs(nb, index: int) -> list[dict]:
    return nb.cells[index].get("outputs", [])


def text_of(nb, index: int) -> str:
    """The plain-text outputs of a code cell (stream text and text/plain results)."""
    parts = []
    for out in outputs(nb, index):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def code_cell(nb, snippet: str) -> int:
    """Index of the first code cell whose source contains `snippet`."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and snippet in cell.source:
            return i
    raise AssertionError(f"no code cell contains {snippet!r}")


# What each notebook must show besides running without error: name -> check(executed nb, workdir).


def check_quickstart(nb, workdir: Path) -> None:
    shown = outputs(nb, code_cell(nb, "s = rlkit.Session"))
    assert any(WIDGET_MIME in out.get("data", {}) for out in shown), "the live dashboard widget was not displayed"
    assert "<rlkit.Session backend='ray' algo='grpo'" in text_of(nb, code_cell(nb, "s = rlkit.Session"))
    table = outputs(nb, code_cell(nb, "batch = s.generate()"))
    assert any("rlkit-batch" in out.get("data", {}).get("text/html", "") for out in table)
    files = text_of(nb, code_cell(nb, "s.close()"))
    for name in ("config.yaml", "dashboard.html", "stats.jsonl"):
        assert name in files
    lines = (workdir / "runs" / "quickstart" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def check_stages(nb, workdir: Path) -> None:
    # the replayed learn call matched the original (the notebook asserts it too; here we see it printed)
    assert "replay matches: True" in text_of(nb, code_cell(nb, "replayed = "))


def check_compare(nb, workdir: Path) -> None:
    for algo in ("ppo", "grpo", "remax"):
        assert (workdir / "runs" / "compare" / algo / "stats.jsonl").is_file(), algo


def check_custom(nb, workdir: Path) -> None:
    assert "roles: ['actor']" in text_of(nb, code_cell(nb, "algorithm=RankPG(cfg)"))  # no reference, no critic
    assert "rank_reinforce -> {" in text_of(nb, code_cell(nb, 'register_algorithm("rank_reinforce"'))


def check_dashboard(nb, workdir: Path) -> None:
    assert "{'generate': 3, 'prepare': 3, 'learn': 3, 'sync': 3}" in text_of(nb, code_cell(nb, "history = s.train(3)"))
    memory = text_of(nb, code_cell(nb, "host RSS (GiB)"))
    for role in ("actor", "critic", "ref", "driver"):
        assert role in memory, role
    assert (workdir / "runs" / "dashboard" / "dashboard.html").stat().st_size > 100_000  # plotly.js inline


def check_rlhf(nb, workdir: Path) -> None:
    nll = re.search(r"answer NLL: ([0-9.]+) -> ([0-9.]+)", text_of(nb, code_cell(nb, "SFTTrainer(")))
    assert nll and float(nll.group(2)) < float(nll.group(1)) - 0.5, "SFT did not lower the answer NLL"
    assert "pairwise accuracy:" in text_of(nb, code_cell(nb, "RewardModelTrainer("))
    assert "'reward'" in text_of(nb, code_cell(nb, "reward_model_path"))  # PPO scored by the reward model
    for folder in ("sft/model", "rm/model", "ppo"):
        assert (workdir / "runs" / "rlhf" / folder).is_dir(), folder


def check_real_model(nb, workdir: Path) -> None:
    # the question went in through SmolLM2's chat template, and the before/after line was printed
    assert "<|im_start|>user\nWhat is " in text_of(nb, code_cell(nb, "batch = s.generate()"))
    assert re.search(r"greedy held-out accuracy: [0-9.]+% -> [0-9.]+% after 1 steps", text_of(nb, code_cell(nb, "after = ")))
    assert (workdir / "runs" / "real-model" / "stats.jsonl").is_file()


def check_long_runs(nb, workdir: Path) -> None:
    runs = workdir / "runs"
    assert "resumed at step 8" in text_of(nb, code_cell(nb, "Session.resume(\"runs/long\""))
    assert [json.loads(line)["step"] for line in (runs / "long" / "stats.jsonl").read_text().splitlines()] == \
        list(range(1, 11))
    assert sorted(p.name for p in (runs / "long" / "checkpoints").glob("step-*")) == ["step-000008", "step-000010"]
    for child, step in (("long-fork10", 10), ("long-fork8", 8)):
        run = json.loads((runs / child / "run.json").read_text())
        assert run["parent"]["step"] == step
        lines = (runs / child / "stats.jsonl").read_text().splitlines()
        assert [json.loads(line)["step"] for line in lines] == list(range(step + 1, step + 5))
    assert (runs / "long-fork8" / "policy" / "config.json").is_file()


CHECKS = {"01_quickstart": check_quickstart, "02_stages_step_by_step": check_stages,
          "03_compare_algorithms": check_compare, "04_custom_advantage": check_custom,
          "05_dashboard_and_memory": check_dashboard, "06_rlhf_pipeline": check_rlhf,
          "07_real_model": check_real_model, "08_long_runs": check_long_runs}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nb = execute(path, tmp_path, monkeypatch)
    check = CHECKS.get(path.stem)
    if check is not None:
        check(nb, tmp_path)


def test_notebooks_exist_and_are_committed_stripped():
    names = [p.stem for p in NOTEBOOKS]
    for expected in ("01_quickstart", "02_stages_step_by_step", "03_compare_algorithms", "04_custom_advantage",
                     "05_dashboard_and_memory", "06_rlhf_pipeline", "07_real_model", "08_long_runs"):
        assert expected in names, f"notebooks/{expected}.ipynb is missing"
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "strip_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"run tools/strip_notebooks.py before committing:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_cells_are_valid_python(path):
    """Fast guard for the slow run: every code cell compiles (a typo fails here in milliseconds)."""
    import ast

    import nbformat

    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            try:
                ast.parse(cell.source)
            except SyntaxError as e:
                raise AssertionError(f"{path.name} cell {i}: {e}") from None


def check_multi_turn_tools(nb, workdir: Path) -> None:
    # one episode printed turn by turn: the environment's turns (chat-templated) apart from the policy's
    turns = text_of(nb, code_cell(nb, "itertools.groupby(policy)"))
    assert re.search(r"^policy +'.+' +reward -0\.1$", turns, re.M), turns  # a miss costs 0.1
    assert re.search(r"^environment '<\|user\|>(higher |lower )?\d-\d<\|assistant\|>'$", turns, re.M), turns
    # the token viewer draws the environment's tokens apart, with the legend and the step rewards' badges
    view = "".join(out.get("data", {}).get("text/html", "")
                   for out in outputs(nb, code_cell(nb, 'color_by="logprob"')))
    assert 'class="tok env"' in view and "environment / tool tokens (not trained)" in view and "r=-0.1" in view
    # environment tokens get no advantage and are not trained
    trained = text_of(nb, code_cell(nb, "stats = s.learn(prepared)"))
    assert "largest |advantage| on environment tokens: 0.0" in trained
    counts = re.search(r"tokens trained: (\d+) = policy tokens in the batch: (\d+) of (\d+)", trained)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(2)) < int(counts.group(3))
    # the update made by hand and the RLKIT_NOTEBOOK_STEPS=1 step of train(), then the before/after line
    assert re.search(r"greedy success: [0-9.]+% -> [0-9.]+% after 2 updates", text_of(nb, code_cell(nb, "after = ")))
    run = re.search(r"runs/grpo-[0-9-]+", text_of(nb, code_cell(nb, "env=GuessWithCost)"))).group()
    lines = [json.loads(line) for line in (workdir / run / "stats.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1] and "env/success" in lines[0]
    # a broken environment: the episode ends (on_error="end"), or the stage stops naming it (on_error="raise")
    assert re.search(r"env/errors = [1-9]\d* of 128 episodes", text_of(nb, code_cell(nb, "env=SevenIsABug)\nbroken")))
    assert "EnvError: environment SevenIsABug, sample " in text_of(nb, code_cell(nb, '"env.on_error": "raise"'))
    # tools: malformed calls become messages for the model; the sandbox stops a runaway loop
    calls = text_of(nb, code_cell(nb, "tools = {\"convert\": convert}"))
    assert "('11.25', True)" in calls and "Error: unknown tool 'exchange'" in calls
    assert "timed out: True" in text_of(nb, code_cell(nb, "looping = run_python("))


CHECKS["09_multi_turn_tools"] = check_multi_turn_tools
