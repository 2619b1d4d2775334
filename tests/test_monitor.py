"""Tests for the notebook building blocks: Dashboard, progress line, batch table and token view."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch

from rlkit.batch import Batch
from rlkit.monitor.batch_view import (
    batch_table_html,
    batch_table_rows,
    response_entropy,
    token_color,
    token_values,
    token_view_html,
)
from rlkit.monitor.dashboard import PANELS, Dashboard, panel_for
from rlkit.monitor.progress import StepProgress, as_float, format_number, format_progress, in_notebook


def plotly_traces(page: str) -> list[dict]:
    """The `data` argument of the first `Plotly.newPlot(div_id, data, layout, config)` in an HTML page."""
    start = page.index("Plotly.newPlot(") + len("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    args, pos = [], start
    while len(args) < 2:
        while page[pos] in " \n\t,":
            pos += 1
        value, pos = decoder.raw_decode(page, pos)
        args.append(value)
    return args[1]


def step_stats(stage: str, step: int) -> dict:
    """What the Session emits for one stage call (a subset of the naming scheme)."""
    stats = {"step": step, f"time/{stage}": 0.5 + step, f"memory/{stage}/rss_gib": 1.0 + 0.1 * step}
    if stage == "generate":
        stats["throughput/generate_tokens_per_s"] = 100.0 * (step + 1)
        stats["response/length_mean"] = 7.0
    if stage == "learn":
        stats |= {"actor/kl": 0.01 * step, "actor/entropy": 2.0 - step, "actor/pg_loss": -0.1 * step,
                  "reward/mean": 0.25 * step, "memory/actor/device_max_gib": 0.0, "actor/lr": 1e-5}
    if stage == "eval":
        stats["eval/accuracy"] = 0.5
    return stats


# ------------------------------------------------------------------ dashboard


def test_dashboard_counts_one_update_per_stage_call():
    dash = Dashboard("run", widget=False)
    for step in range(3):
        for stage in ("generate", "prepare", "learn", "sync"):
            dash.update(stage, step_stats(stage, step))
    dash.update("eval", step_stats("eval", 2))
    assert dash.num_updates == 13
    assert dict(dash.stage_counts) == {"generate": 3, "prepare": 3, "learn": 3, "sync": 3, "eval": 1}
    steps, values = dash.history["reward/mean"]
    assert steps == [0, 1, 2] and values == [0.0, 0.25, 0.5]
    assert dash.history["eval/accuracy"] == ([2], [0.5])
    assert dash.step == 2


def test_dashboard_rerun_stage_replaces_point_and_step_carries_over():
    dash = Dashboard(widget=False)
    dash.update("generate", {"step": 4, "reward/mean": 0.1, "note": "text is not plotted"})
    dash.update("generate", {"step": 4, "reward/mean": 0.3})  # re-running a stage at the same step
    dash.update("learn", {"actor/kl": torch.tensor(0.02)})  # no step: drawn at the last step seen
    assert dash.history["reward/mean"] == ([4], [0.3])
    assert dash.history["actor/kl"][0] == [4]
    assert dash.history["actor/kl"][1][0] == pytest.approx(0.02)
    assert "note" not in dash.history
    assert dash.num_updates == 3


def test_dashboard_rejects_bad_input_with_named_stage():
    dash = Dashboard(widget=False)
    with pytest.raises(TypeError, match=r"Dashboard.update\('learn'"):
        dash.update("learn", [1, 2])
    with pytest.raises(TypeError, match="step"):
        dash.update("learn", {"step": "three"})
    with pytest.raises(ValueError, match="stage"):
        dash.update("", {})


def test_panel_mapping():
    titles = [p.title for p in PANELS]
    assert panel_for("time/generate") == (titles.index("stage time (s)"), "generate")
    assert panel_for("throughput/learn_tokens_per_s") == (titles.index("throughput (tokens/s)"), "learn")
    assert panel_for("memory/critic/rss_gib") == (titles.index("host RSS (GiB)"), "critic")
    assert panel_for("memory/actor/device_max_gib") == (titles.index("device memory peak (GiB)"), "actor")
    assert panel_for("reward/mean") == (titles.index("reward / cost"), "reward")
    assert panel_for("cost/mean") == (titles.index("reward / cost"), "cost")
    assert panel_for("actor/kl") == (titles.index("KL"), "kl")
    assert panel_for("critic/vf_loss") == (titles.index("loss"), "critic/vf_loss")
    assert panel_for("eval/pass@k") == (titles.index("eval"), "pass@k")
    assert panel_for("actor/lr") is None and panel_for("sync/bytes") is None
    assert panel_for("weight_sync/bytes") == (titles.index("weight sync (bytes per engine)"), "bytes")
    assert panel_for("memory/actor/rss_gib_extra") is None  # full match only
    assert panel_for("env/success") == (titles.index("episodes (fraction)"), "success")
    assert panel_for("env/tool_calls") == (titles.index("episodes (per episode)"), "tool_calls")


def test_write_html_is_self_contained_and_holds_the_traces(tmp_path):
    dash = Dashboard("html export", widget=False)
    for step in range(3):
        for stage in ("generate", "learn"):
            dash.update(stage, step_stats(stage, step))
    path = dash.write_html(tmp_path / "sub" / "dash.html")
    page = path.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page), "plotly.js must be inline, not loaded from a CDN"
    assert "html export" in page
    traces = plotly_traces(page)
    by_hover = {t["hovertemplate"].split("<br>")[0]: t for t in traces}
    assert by_hover["reward/mean"]["x"] == [0, 1, 2]
    assert by_hover["reward/mean"]["y"] == [0.0, 0.25, 0.5]
    assert by_hover["throughput/generate_tokens_per_s"]["y"] == [100.0, 200.0, 300.0]
    # host RSS per role: one trace per role, all in the RSS panel (subplot 3)
    assert {by_hover[f"memory/{r}/rss_gib"]["name"] for r in ("generate", "learn")} == {"generate", "learn"}
    assert {by_hover[f"memory/{r}/rss_gib"]["xaxis"] for r in ("generate", "learn")} == {"x3"}
    assert "actor/lr" not in by_hover  # no panel draws it
    # one legend entry per label: "generate" is in the time, throughput and RSS panels
    assert sum(t["showlegend"] for t in traces if t["name"] == "generate") == 1


def test_widget_is_updated_in_place():
    pytest.importorskip("anywidget")
    dash = Dashboard("live", widget=True)
    assert dash.is_live
    widget = dash._widget
    dash.update("learn", step_stats("learn", 0))
    dash.update("learn", step_stats("learn", 1))
    assert dash._widget is widget  # the same FigureWidget, never rebuilt
    index = {t.hovertemplate.split("<br>")[0]: t for t in widget.data}
    assert tuple(index["reward/mean"].y) == (0.0, 0.25)
    assert tuple(index["actor/entropy"].x) == (0, 1)
    assert len(widget.data) == len({k for k in step_stats("learn", 0) if panel_for(k)})
    assert "step 1" in dash._header.value and "learn ×2" in dash._header.value
    # the static figure draws the same traces
    static = {t.hovertemplate.split("<br>")[0]: tuple(t.y) for t in dash.figure().data}
    assert static == {k: tuple(t.y) for k, t in index.items()}


def test_not_in_notebook_under_pytest():
    assert in_notebook() is False
    assert Dashboard(widget=None).is_live is False


# ------------------------------------------------------------------ progress


def test_format_progress_hand_computed():
    stats = {"step": 3, "reward/mean": 0.4213, "throughput/generate_tokens_per_s": 512.4, "time/learn": 1.234,
             "actor/pg_loss": 9.0}
    assert format_progress(stats, total=10) == "step 3/10 | reward 0.421 | gen 512 tok/s | learn 1.23s"
    assert format_progress(stats, with_step=False) == "reward 0.421 | gen 512 tok/s | learn 1.23s"
    assert format_progress({}) == ""
    assert format_number(12345.6) == "12346" and format_number(0.000123456) == "0.000123"
    assert format_number(float("nan")) == "nan" and format_number(7) == "7"
    assert as_float(torch.tensor([2.5])) == 2.5 and as_float(torch.ones(2)) is None and as_float("1") is None


def test_step_progress_counts_and_keeps_line():
    with StepProgress(total=4, desc="t", disable=True) as bar:
        for step in range(3):
            line = bar.advance({"step": step, "reward/mean": step / 2})
        assert bar.n == 3
        assert line == bar.last_line == "reward 1"


# ------------------------------------------------------------------ batch view


@pytest.fixture(scope="module")
def char_tokenizer():
    from rlkit.data import build_char_tokenizer

    return build_char_tokenizer()


def make_batch(tokenizer) -> Batch:
    """Two arithmetic rows, built by hand: token ids from the char tokenizer, known logprobs/advantages."""
    prompts, responses = ["1+2=", "13+4<5="], ["3", "17"]
    enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    rows = [tokenizer(r, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for r in responses]
    width = max(map(len, rows)) + 1  # one extra padding column
    response_ids = torch.full((2, width), tokenizer.pad_token_id)
    response_mask = torch.zeros(2, width, dtype=torch.long)
    for i, ids in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    rollout = torch.tensor([[-0.5, -1.0, 0.0, 0.0], [-0.1, -2.0, -0.3, 0.0]])
    return Batch.from_prompts(enc.input_ids, enc.attention_mask, prompt_text=prompts, ground_truth=["3", "17"]).replace(
        response_ids=response_ids,
        response_mask=response_mask,
        response_text=responses,
        rollout_logprobs=rollout,
        old_logprobs=rollout - torch.tensor([[0.25, 0.0, 0.0, 0.0], [0.0, -0.5, 0.0, 9.0]]),
        scores=torch.tensor([1.0, 0.0]),
        # the padding column holds 99: it must not enter the mean
        advantages=torch.tensor([[1.0, 1.0, 99.0, 99.0], [-1.0, -2.0, -3.0, 99.0]]),
    )


def test_batch_table_rows_and_html(char_tokenizer):
    batch = make_batch(char_tokenizer)
    rows = batch_table_rows(batch)
    assert [r["length"] for r in rows] == [2, 3]
    assert [r["advantage"] for r in rows] == [1.0, -2.0]  # mean over valid tokens only
    assert [r["score"] for r in rows] == [1.0, 0.0]
    page = batch_table_html(batch)
    assert "1+2=" in page and "13+4&lt;5=" in page  # prompts, HTML-escaped
    assert "<td class=\"txt\">17</td>" in page  # responses
    assert "2 rows" in page
    assert "first 1 of 2 rows" in batch_table_html(batch, max_rows=1)
    assert batch._repr_html_() == page  # what Jupyter shows for a Batch


def test_batch_table_without_text_shows_ids():
    batch = Batch.from_prompts(torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]])).replace(
        response_ids=torch.tensor([[7, 8, 9]]), response_mask=torch.tensor([[1, 1, 0]]))
    (row,) = batch_table_rows(batch)
    assert row["prompt"] == "ids [5, 6]" and row["response"] == "ids [7, 8]"
    assert row["score"] is None and row["advantage"] is None and row["length"] == 2


def _tooltips(page: str) -> list[str]:
    return re.findall(r'class="tok" title="([^"]*)"', page)


def test_token_view_colours_every_valid_token(char_tokenizer):
    batch = make_batch(char_tokenizer)
    page = token_view_html(batch, char_tokenizer, row=1, color_by="logprob_gap")
    tips = _tooltips(page)
    assert len(tips) == 3  # "1", "7", eos; the padding column is not shown
    assert "logprob_gap=0 " in tips[0] or tips[0].endswith("logprob_gap=0")
    assert "logprob_gap=-0.5" in tips[1]
    assert "13+4&lt;5=" in page  # the prompt, escaped
    assert ">1</span>" in page and ">7</span>" in page and "&lt;|eos|&gt;" in page
    assert "rgba(38,110,200,0.850)" in page  # the largest |gap| (-0.5) gets full blue
    for color_by in ("logprob", "advantage"):
        assert len(_tooltips(token_view_html(batch, char_tokenizer, 0, color_by))) == 2
    entropy = torch.tensor([[0.1, 0.2, 0.0, 0.0], [1.0, 2.0, 3.0, 0.0]])
    assert "entropy=3" in _tooltips(token_view_html(batch, char_tokenizer, 1, "entropy", entropy=entropy))[2]
    assert token_values(batch, 0, "logprob").tolist() == [-0.5, -1.0, 0.0, 0.0]  # rollout log-probs first
    assert token_values(batch, 1, "advantage")[:3].tolist() == [-1.0, -2.0, -3.0]


def test_token_view_shows_the_importance_weight_and_policy_version(char_tokenizer):
    batch = make_batch(char_tokenizer).replace(policy_version=torch.tensor([0, 3]))
    # row 1: gap rollout - old = [0, -0.5, ...]: weights pi_old / pi_rollout = [1, e^0.5]
    weights = token_values(batch, 1, "is_weight")
    assert weights[:2].tolist() == pytest.approx([1.0, math.exp(0.5)])
    page = token_view_html(batch, char_tokenizer, row=1, color_by="is_weight")
    tips = _tooltips(page)
    assert "is_weight=1 " in tips[0] + " " and "is_weight=1.649" in tips[1]
    assert ",0.000)" in page.split('class="tok"')[1]  # a weight of exactly 1: no colour
    assert "rgba(220,50,47,0.850)" in page  # the largest |log w| (0.5, above 1) gets full red
    assert "drawn by policy version 3" in page
    gap_tips = _tooltips(token_view_html(batch, char_tokenizer, row=1, color_by="logprob_gap"))
    assert "weight pi_old/pi_rollout=1.649" in gap_tips[1]


def test_token_view_names_missing_fields(char_tokenizer):
    batch = make_batch(char_tokenizer)
    with pytest.raises(ValueError, match=r"Batch\.advantages"):
        token_view_html(batch.replace(advantages=None), char_tokenizer, 0, "advantage")
    with pytest.raises(ValueError, match=r"Batch\.old_logprobs"):
        token_view_html(batch.replace(old_logprobs=None), char_tokenizer, 0, "logprob_gap")
    with pytest.raises(ValueError, match=r"rollout_logprobs or Batch\.old_logprobs"):
        token_view_html(batch.replace(old_logprobs=None, rollout_logprobs=None), char_tokenizer, 0)
    with pytest.raises(ValueError, match=r"entropy=.*model="):
        token_view_html(batch, char_tokenizer, 0, "entropy")
    with pytest.raises(ValueError, match="color_by must be one of"):
        token_view_html(batch, char_tokenizer, 0, "surprise")
    with pytest.raises(IndexError, match="row 5"):
        token_view_html(batch, char_tokenizer, 5)
    assert token_values(batch.replace(rollout_logprobs=None), 1, "logprob").tolist() == \
        batch.old_logprobs[1].tolist()  # falls back to the trainer's log-probs


def make_multi_turn_batch(tokenizer) -> Batch:
    """Two episodes laid out as `EnvRollout` lays them out, built by hand.

    row 0: policy "5<eos>" | env "<|user|>higher<|assistant|>" | policy "7<eos>"  (12 tokens, 8 of them env)
    row 1: policy "3<eos>" | padding                                               (one turn)
    Step rewards -0.25 and 1 end row 0's two turns, 1 ends row 1's. The environment columns hold
    garbage log-probs (-7.5) and advantages (50): the view and the table must ignore them.
    """
    eos = tokenizer.eos_token_id

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids

    turns = [[(enc("5") + [eos], 1), (enc("<|user|>higher<|assistant|>"), 0), (enc("7") + [eos], 1)],
             [(enc("3") + [eos], 1)]]
    step_rewards = [[-0.25, 1.0], [1.0]]
    width = 13  # one padding column in row 0
    response_ids = torch.full((2, width), tokenizer.pad_token_id)
    response_mask = torch.zeros(2, width, dtype=torch.long)
    loss_mask = torch.zeros(2, width, dtype=torch.long)
    turn_rewards = torch.zeros(2, width)
    rollout = torch.zeros(2, width)
    advantages = torch.zeros(2, width)
    for i, row in enumerate(turns):
        pos, rewards = 0, iter(step_rewards[i])
        for ids, policy in row:
            span = slice(pos, pos + len(ids))
            response_ids[i, span], response_mask[i, span], loss_mask[i, span] = torch.tensor(ids), 1, policy
            rollout[i, span] = -0.5 if policy else -7.5
            advantages[i, span] = 1.0 + i if policy else 50.0
            pos += len(ids)
            if policy:
                turn_rewards[i, pos - 1] = next(rewards)
    prompts = ["guess 1-9:", "guess 1-3:"]
    enc_prompts = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    return Batch.from_prompts(enc_prompts.input_ids, enc_prompts.attention_mask, prompt_text=prompts).replace(
        response_ids=response_ids, response_mask=response_mask, loss_mask=loss_mask, turn_rewards=turn_rewards,
        rollout_logprobs=rollout, old_logprobs=rollout - 0.1, advantages=advantages,
        scores=turn_rewards.sum(-1), response_text=["5", "3"],
    )


def _token_kinds(page: str) -> list[str]:
    """The token view's pieces in order: "tok" (policy), "tok env" (environment) or "reward" (a badge)."""
    return re.findall(r'<span class="(tok env|tok|reward)"', page)


def test_token_view_marks_environment_tokens_and_turn_rewards(char_tokenizer):
    batch = make_multi_turn_batch(char_tokenizer)
    env = batch.response_mask.bool() & ~batch.loss_mask.bool()  # (B, T)
    assert env[0].sum() == 8 and env[1].sum() == 0
    page = token_view_html(batch, char_tokenizer, row=0, color_by="logprob_gap")
    # every valid position in order: policy or environment token, then a badge where a step reward fell
    expected = []
    for t in range(batch.response_mask.shape[1]):
        if batch.response_mask[0, t]:
            expected.append("tok env" if env[0, t] else "tok")
        if batch.turn_rewards[0, t] != 0:
            expected.append("reward")
    assert _token_kinds(page) == expected
    assert _token_kinds(page).count("tok env") == 8 and _token_kinds(page).count("reward") == 2
    env_tips = re.findall(r'class="tok env" title="([^"]*)"', page)
    assert len(env_tips) == 8 and all("environment / tool token" in tip for tip in env_tips)
    assert not any("logprob_gap" in tip or "weight" in tip for tip in env_tips)  # not sampled: no gap
    assert "&#x27;h&#x27; id=79 environment" in env_tips[1]  # the tooltip names the token
    assert "environment / tool tokens (not trained)" in page and "8 of 12 tokens" in page
    badges = re.findall(r'<span class="reward" title="([^"]*)"[^>]*>([^<]*)</span>', page)
    assert [text for _, text in badges] == ["r=-0.25", "r=1"]
    assert "policy turn 1" in badges[0][0] and "policy turn 2" in badges[1][0]
    tips = _tooltips(page)  # policy tokens only: "5", eos, "7", eos
    assert len(tips) == 4 and "turn 1 reward=-0.25" in tips[1] and "turn 2 reward=1" in tips[3]
    # the scale and stats ignore the environment's -7.5 log-probs
    logprob_page = token_view_html(batch, char_tokenizer, row=0, color_by="logprob")
    assert "policy tokens: min -0.5, mean -0.5, max -0.5" in logprob_page and "-7.5" not in logprob_page
    # a one-turn row of a multi-turn batch: no environment token, one badge
    assert _token_kinds(token_view_html(batch, char_tokenizer, row=1)) == ["tok", "tok", "reward"]


def test_single_turn_token_view_has_no_environment_markup(char_tokenizer):
    batch = make_batch(char_tokenizer)
    for color_by in ("logprob", "advantage", "logprob_gap", "is_weight"):
        page = token_view_html(batch, char_tokenizer, 1, color_by)
        assert set(_token_kinds(page)) == {"tok"} and len(_tooltips(page)) == 3
        assert "environment" not in page and 'class="reward"' not in page and "policy tokens:" not in page
    assert "policy_tokens" not in batch_table_html(batch) and "turns" not in batch_table_rows(batch)[0]


def test_batch_table_of_a_multi_turn_batch(char_tokenizer):
    batch = make_multi_turn_batch(char_tokenizer)
    rows = batch_table_rows(batch)
    assert [r["length"] for r in rows] == [12, 2]  # policy and environment tokens
    assert [r["policy_tokens"] for r in rows] == [4, 2]
    assert [r["turns"] for r in rows] == [2, 1]
    assert [r["advantage"] for r in rows] == [1.0, 2.0]  # over trained tokens: the env columns' 50 is left out
    assert [r["score"] for r in rows] == [0.75, 1.0]
    page = batch._repr_html_()
    assert "<th>policy_tokens</th>" in page and "<th>turns</th>" in page and "2 rows" in page


class _StairModel(torch.nn.Module):
    """At position p the next-token distribution is uniform over the first p+1 of 8 tokens: entropy log(p+1)."""

    def forward(self, input_ids):
        length, vocab = input_ids.shape[1], 8
        allowed = torch.arange(vocab)[None, :] <= torch.arange(length)[:, None]  # (L, vocab)
        logits = torch.where(allowed, 0.0, float("-inf"))
        return SimpleNamespace(logits=logits[None])  # (1, L, vocab)


def test_response_entropy_reads_the_position_before_each_token():
    # prompt: 1 pad + 3 real tokens; response token t is predicted at position 3 - 1 + t -> entropy log(3 + t)
    batch = Batch.from_prompts(torch.tensor([[0, 1, 2, 3]]), torch.tensor([[0, 1, 1, 1]])).replace(
        response_ids=torch.tensor([[4, 5, 6]]), response_mask=torch.tensor([[1, 1, 1]]))
    entropy = response_entropy(_StairModel(), batch, 0)
    assert entropy.tolist() == pytest.approx([math.log(3), math.log(4), math.log(5)])
    page = token_view_html(batch, None, 0, "entropy", model=_StairModel())
    assert len(_tooltips(page)) == 3 and "[4]" in page  # no tokenizer: ids shown


def test_token_color_scales():
    assert token_color(-2.0, 2.0, "logprob") == "rgba(220,50,47,0.850)"
    assert token_color(0.0, 2.0, "logprob") == "rgba(220,50,47,0.000)"
    assert token_color(1.0, 2.0, "advantage") == "rgba(220,50,47,0.425)"
    assert token_color(-1.0, 2.0, "logprob_gap") == "rgba(38,110,200,0.425)"
    assert token_color(5.0, 2.0, "entropy") == "rgba(245,130,20,0.850)"  # clipped at full colour
    assert token_color(float("nan"), 2.0, "advantage") == "transparent"


@pytest.mark.slow
def test_in_a_real_kernel_the_dashboard_is_a_live_widget_and_a_batch_a_table():
    """Executes a notebook headless: kernel detection, the widget display, in-place updates, Batch HTML."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("anywidget")
    import pathlib

    cells = [
        "from rlkit.monitor import Dashboard, in_notebook\n"
        "dash = Dashboard('nb')\nprint(in_notebook(), dash.is_live)\ndash.show()",
        "for step in range(3):\n    dash.update('learn', {'step': step, 'reward/mean': step / 4})\n"
        "print(dash.num_updates, tuple(dash._widget.data[0].y))",
        "import torch\nfrom rlkit.batch import Batch\n"
        "Batch.from_prompts(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long), prompt_text=['12+5=']).replace(\n"
        "    response_ids=torch.tensor([[3]]), response_mask=torch.tensor([[1]]), response_text=['17'])",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    root = pathlib.Path(__file__).resolve().parents[1]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(root)}}).execute()
    first, second, third = (cell.outputs for cell in nb.cells)
    assert first[0]["text"].strip() == "True True"
    assert "application/vnd.jupyter.widget-view+json" in first[1]["data"]  # the live widget, not a static image
    assert second[0]["text"].strip() == "3 (0.0, 0.25, 0.5)"
    page = third[0]["data"]["text/html"]
    assert "12+5=" in page and ">17</td>" in page
