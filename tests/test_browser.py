"""The quickstart in a real browser: JupyterLab + headless Chromium, Run All Cells, the live plot moves.

What nbclient cannot check: that the dashboard widget really renders in JupyterLab (the
anywidget/plotly front-end extensions load offline) and that its plot updates while cells run.
Recipe (see NOTES.md): JupyterLab on 127.0.0.1 with a fixed token and news/update checks off,
Chromium from the Debian package driven by Playwright (never `playwright install`), `?reset`
in the URL, wait for the kernel's "Idle", Run > Run All Cells, then read the plot's point count
(`document.querySelector('.js-plotly-plot').data`) while training runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
NOTEBOOK = ROOT / "notebooks" / "01_quickstart.ipynb"
TOKEN = "rlkit-browser-test"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
RUN_TIMEOUT_S = 900  # the whole notebook on a loaded 2-core box (Ray start-up included)

# One poll of the page: the point count of the first plotly plot (sum over its traces; -1: no plot
# yet), the execution prompts of the code cells ("[1]:", "[*]:", "[ ]:"), and whether an output shows a
# Python traceback.
POLL_JS = """() => {
  const el = document.querySelector('.js-plotly-plot');
  const points = (el && el.data) ? el.data.reduce((n, t) => n + (t.x ? t.x.length : 0), 0) : -1;
  const prompts = Array.from(document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt'))
    .map(e => e.textContent.trim());
  // textContent, not innerText: innerText forces a layout of the whole notebook at every poll.
  const errors = Array.from(document.querySelectorAll('.jp-OutputArea-output[data-mime-type*="stderr"]'))
    .map(e => e.textContent).filter(t => t.includes('Traceback (most recent call last)'));
  return {points, prompts, errors};
}"""
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium "
                       "chromium-driver (CI's .ci/run installs it)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_settings(settings_dir: Path) -> None:
    """User settings: no news or update checks (no network here), and every cell kept in the page (by
    default JupyterLab detaches cells scrolled out of view, and Run All scrolls the plot away)."""
    for plugin, values in (("apputils-extension/notification", {"checkForUpdates": False, "fetchNews": "false"}),
                           ("notebook-extension/tracker", {"windowingMode": "none"})):
        path = settings_dir / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer on {url} within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def jupyterlab(tmp_path):
    """JupyterLab serving a copy of the quickstart from tmp_path; yields its base URL."""
    pytest.importorskip("jupyterlab", reason="JupyterLab is in the dev extra: pip install -e '.[dev]'")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    quiet_settings(tmp_path / "settings")
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # the kernel starts its own W&B service, not the one of an earlier test
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               WANDB_MODE="offline", TOKENIZERS_PARALLELISM="false", RAY_AUTH_MODE="disabled")
    port = free_port()
    log = tmp_path / "jupyterlab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={work}",
             "--ServerApp.terminals_enabled=False", "--LabApp.news_url=None", "--LabApp.extension_manager=readonly",
             "--allow-root"],  # CI containers run as root
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, proc, log)
        yield url, work, log
    finally:
        # Shut the kernels down through the server first (the notebook's Ray goes with its kernel).
        try:
            req = urllib.request.Request(f"{url}/api/shutdown?token={TOKEN}", method="POST")
            urllib.request.urlopen(req, timeout=10)
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the process group this fixture started
            proc.wait(timeout=30)


def test_quickstart_live_plot_in_jupyterlab(jupyterlab, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the dev extra")
    url, work, log = jupyterlab

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/{NOTEBOOK.name}?reset&token={TOKEN}", timeout=120_000)
            # The status bar says "Idle" once the kernel is connected (the toolbar's indicator can say
            # idle before that).
            page.locator(".jp-StatusBar-Widget").get_by_text("Idle").first.wait_for(timeout=180_000)

            run_all(page)
            counts = watch_until_done(page, tmp_path)
            (tmp_path / "point_counts.json").write_text(json.dumps(counts))
            # JupyterLab scrolls inside its own panel: bring the dashboard into view for the picture.
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            page.screenshot(path=str(tmp_path / "quickstart.png"))
        finally:
            browser.close()

    positive = [c for c in counts if c > 0]
    assert positive, f"the live plot never showed a point (counts seen: {counts[-20:]})"
    # Changed while training ran: several different non-zero point counts, growing.
    assert len(set(positive)) >= 2, f"the plot did not change while cells ran (counts: {sorted(set(counts))})"
    assert positive[-1] > positive[0]
    assert (tmp_path / "quickstart.png").stat().st_size > 10_000
    assert (work / "runs" / "quickstart" / "dashboard.html").is_file()


def run_all(page) -> None:
    """Run > Run All Cells, retried until the first code cell's prompt shows it started."""
    for _ in range(5):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            prompts = page.evaluate(POLL_JS)["prompts"]
            if prompts and prompts[0] not in ("[ ]:", ""):
                return
            time.sleep(0.5)
    raise AssertionError("Run All Cells did not start the first cell")


def watch_until_done(page, tmp_path: Path) -> list[int]:
    """Poll the dashboard's point count until every code cell has run; fail on a Python error."""
    counts: list[int] = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = page.evaluate(POLL_JS)
        counts.append(state["points"])
        if state["errors"]:
            page.screenshot(path=str(tmp_path / "error.png"))
            raise AssertionError("a cell failed:\n" + state["errors"][0][-4000:])
        prompts = state["prompts"]
        if prompts and all(p[1:-2].isdigit() for p in prompts):  # "[12]:" for every code cell
            return counts
        # Not faster: on a loaded 2-core box, polling every 0.5 s starved the page enough that the
        # widget view was created only after training had ended.
        time.sleep(1.0)
    page.screenshot(path=str(tmp_path / "timeout.png"))
    raise AssertionError(f"the notebook did not finish in {RUN_TIMEOUT_S}s; prompts: {page.evaluate(POLL_JS)['prompts']}")
