"""Every tutorial page's ```python blocks run as written, in order, in one fresh Python process per page.

Only fences opened with exactly ```python run (```bash and others are shown, not run). The page
runs with its working directory in a temporary folder, so `runs/` lands there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "tutorials").glob("*.md"))
PAGE_TIMEOUT = 900  # seconds per page on a loaded 2-core CI box
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of every ```python block, in order."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def page_script(page: Path) -> str:
    """The page's blocks as one script; each block announces itself so a failure names its line."""
    parts = []
    for line, code in python_blocks(page.read_text(encoding="utf-8")):
        parts.append(f"print('[tutorial] {page.name} block at line {line}', flush=True)\n{code}")
    return "\n".join(parts)


def test_blocks_are_found_in_order():
    text = "intro\n```python\na = 1\n```\n```bash\nls\n```\n\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n"), (9, "b = a + 1\n")]


def test_pages_are_numbered_and_have_code():
    names = [p.name for p in PAGES]
    assert len(names) >= 4, f"expected numbered tutorial pages in tutorials/, found {names}"
    for i, page in enumerate(PAGES, start=1):
        assert page.name.startswith(f"{i:02d}-"), f"tutorial pages must be numbered 01-, 02-, ...: {names}"
        assert python_blocks(page.read_text(encoding="utf-8")), f"{page.name} has no ```python block"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_tutorial_runs(page, tmp_path):
    script = tmp_path / f"{page.stem}.py"
    script.write_text(page_script(page), encoding="utf-8")
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # a W&B service started by an earlier test in this process is not the page's
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false",
               RAY_AUTH_MODE="disabled", WANDB_SILENT="true")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=PAGE_TIMEOUT)
    if result.returncode != 0:
        started = re.findall(r"\[tutorial\] (.*)", result.stdout)
        where = started[-1] if started else "before the first block"
        pytest.fail(f"tutorials/{page.name} failed in {where} (exit {result.returncode}):\n"
                    f"--- stdout (tail) ---\n{result.stdout[-3000:]}\n--- stderr (tail) ---\n{result.stderr[-5000:]}")
    blocks = len(python_blocks(page.read_text(encoding="utf-8")))
    assert len(re.findall(r"\[tutorial\] ", result.stdout)) == blocks  # every block ran
