"""What a notebook user sees: the dashboard moves once per stage, the HTML export holds the
figures, the token view renders a real batch, and a batch from another run fails clearly.

Sessions here use the local backend (one process): Ray adds nothing to what is checked,
and each Session starts in seconds.
"""

from __future__ import annotations

import json
import math
import re

import pytest

import rlkit
from rlkit.batch import Batch
from rlkit.monitor.batch_view import token_view_html


def digit_fraction(text: str, ground_truth, eos_seen: bool) -> float:
    """A dense rule an untrained model already scores on (the arithmetic reward is ~always 0)."""
    return sum(c.isdigit() for c in text) / max(len(text), 1)


def tiny_config(tmp_path, name="run", **overrides):
    base = dict(
        logging={"run_dir": str(tmp_path), "run_name": name},
        rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 4},
        actor={"mini_batch_size": 16, "micro_batch_size": 8},
        critic={"micro_batch_size": 8},
        cluster={"backend": "local"},
    )
    base.update(overrides)
    return rlkit.Config.preset("arithmetic-tiny", **base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One Session that ran `train(2)`, then closed: the session, its step stats, stage counts, its last
    prepared batch and that batch's token views keyed by (row, color_by)."""
    tmp = tmp_path_factory.mktemp("experience")
    s = rlkit.Session(tiny_config(tmp), reward_fn=digit_fraction)
    try:
        history = s.train(2)
        counts = dict(s.dashboard.stage_counts)
        updates = s.dashboard.num_updates
        batch = s.last_batch
        html_token_views = {
            (row, color_by): token_view_html(batch, s.tokenizer, row=row, color_by=color_by)
            for row in (0, 5)
            for color_by in ("logprob", "advantage", "logprob_gap")
        }
    finally:
        s.close()
    yield dict(session=s, history=history, counts=counts, updates=updates, batch=batch, views=html_token_views)


def test_dashboard_gets_exactly_one_update_per_stage(trained):
    # learn ends with its own weight-sync stage (time/sync, weight_sync/bytes)
    assert trained["counts"] == {"generate": 2, "prepare": 2, "learn": 2, "sync": 2}
    assert trained["updates"] == 8
    dash = trained["session"].dashboard
    # one point per step for every stage time, with the values the step stats report
    for stage in ("generate", "prepare", "learn"):
        steps, values = dash.history[f"time/{stage}"]
        assert steps == [1, 2], stage
        assert values == pytest.approx([h[f"time/{stage}"] for h in trained["history"]]), stage


def test_html_export_contains_the_figures(trained):
    s = trained["session"]
    path = s.run_dir / "dashboard.html"
    assert path.is_file(), "Session.close() must export the dashboard"
    text = path.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", text), "the export must not load scripts (plotly.js inline)"
    # The figure's JSON is embedded in Plotly.newPlot("id", data, layout): read it back.
    call = text.index("Plotly.newPlot(")
    decoder = json.JSONDecoder()
    at = text.index("[", call)
    traces, end = decoder.raw_decode(text, at)
    layout, _ = decoder.raw_decode(text, text.index("{", end))
    by_key = {t["hovertemplate"].split("<br>")[0]: t for t in traces}
    for key in ("time/generate", "time/prepare", "time/learn", "reward/mean", "memory/actor/rss_gib"):
        assert key in by_key, f"{key} missing from the exported figure"
    assert by_key["time/learn"]["x"] == [1, 2]
    assert by_key["reward/mean"]["y"] == pytest.approx([h["reward/mean"] for h in trained["history"]])
    titles = {a["text"] for a in layout["annotations"]}
    assert {"stage time (s)", "host RSS (GiB)", "reward / cost", "throughput (tokens/s)"} <= titles


def test_token_view_renders_a_real_prepared_batch(trained):
    batch, views = trained["batch"], trained["views"]
    assert batch.advantages is not None and batch.old_logprobs is not None
    for row in (0, 5):
        length = int(batch.response_mask[row].sum())
        for color_by in ("logprob", "advantage", "logprob_gap"):
            html = views[(row, color_by)]
            # one coloured span per real response token, after the prompt text
            assert html.count('class="tok"') == length, (row, color_by)
            assert batch.prompt_text[row] in html and f"row {row}" in html
        # the log-prob tooltips hold p = exp(rollout log-prob) of each sampled token, in order
        expected = [f"p={math.exp(v):.3g}" for v in batch.rollout_logprobs[row][:length].tolist()]
        assert re.findall(r"p=[0-9.e+-]+", views[(row, "logprob")]) == expected
        # advantage colours: GRPO gives every token of a row the same advantage, so one colour per row
        colours = re.findall(r'style="background:([^"]+)"', views[(row, "advantage")])
        assert len(colours) == length and len(set(colours)) == 1


def test_batch_from_an_incompatible_run_is_a_clear_error(tmp_path):
    # A prepared batch saved by a run that generated up to 4 new tokens ...
    with rlkit.Session(tiny_config(tmp_path, "a"), reward_fn=digit_fraction) as first:
        prepared = first.prepare(first.generate())
        vocab = first.vocab_size
        path = prepared.save(tmp_path / "prepared.pt")
    assert int(prepared.response_mask.sum(-1).max()) == 4  # untrained: every response runs to the limit

    # ... replayed in a session whose rollout.max_new_tokens is 2, and with token ids of a bigger vocabulary.
    big_vocab = prepared.replace(response_ids=prepared.response_ids.clone())
    big_vocab.response_ids[3, 1] = vocab + 7
    big_path = big_vocab.save(tmp_path / "big_vocab.pt")
    with rlkit.Session(tiny_config(tmp_path, "b", rollout={"prompts_per_step": 4, "n": 4, "max_new_tokens": 2}),
                       reward_fn=digit_fraction) as second:
        assert second.vocab_size == vocab
        with pytest.raises(ValueError, match=r"Session\.learn: .*row \d+ has a 4-token response .*"
                                             r"rollout\.max_new_tokens = 2"):
            second.learn(Batch.load(path))
        with pytest.raises(ValueError, match=rf"Session\.prepare: .*response_ids\[3, 1\] = {vocab + 7} is outside "
                                             rf"the session's model vocabulary of {vocab} tokens"):
            second.prepare(Batch.load(big_path))
        with pytest.raises(ValueError, match="advantages, old_logprobs.*prepare"):
            second.learn(Batch.load(path).replace(advantages=None, old_logprobs=None))
        # the session is unharmed: its own batches still go through
        own = second.prepare(second.generate())
        assert int(own.response_mask.sum(-1).max()) <= 2
        assert "actor/pg_loss" in second.learn(own)


def test_session_displays_its_dashboard(tmp_path, capsys):
    """`s` (or `s.dashboard`) last in a cell shows the Session line and its dashboard."""
    from unittest import mock

    with rlkit.Session(tiny_config(tmp_path), reward_fn=digit_fraction) as s:
        assert s.dashboard is s.monitor.dashboard
        with mock.patch.object(type(s.dashboard), "show") as show:
            s._ipython_display_()
        show.assert_called_once()
        assert "<rlkit.Session backend='local' algo='grpo'" in capsys.readouterr().out


def test_rerunning_a_stage_in_the_same_step_keeps_one_trace_per_key():
    """The quickstart calls generate/prepare/learn by hand, then train(): both are step 1, so the second
    call replaces the first's points. The live plot must then show each key once, with the new value."""
    from rlkit.monitor.dashboard import Dashboard

    dash = Dashboard(widget=True)  # a FigureWidget works outside a kernel too (no display)
    dash.update("generate", {"step": 1, "time/generate": 1.0})
    dash.update("generate", {"step": 1, "time/generate": 2.0})  # re-run in step 1
    dash.update("generate", {"step": 2, "time/generate": 3.0})
    live = [(list(t.x), list(t.y)) for t in dash._widget.data]
    assert live == [([1, 2], [2.0, 3.0])]
    assert len(dash.figure().data) == 1
