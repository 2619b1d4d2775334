"""The live dashboard: one figure of small panels (stage times, tokens/s, memory per role, reward, KL ...).

The Session calls `update(stage, stats)` once per stage call (generate, prepare,
learn, sync, eval) with a flat dict in the rlkit naming scheme (`time/generate`,
`memory/actor/rss_gib`, `reward/mean`, ...; see `PANELS`). The dashboard keeps
one point per (metric, step) and draws:

- in a notebook (`widget=True`, the default there): a plotly `FigureWidget` in an
  ipywidgets box, updated in place with one batched message per update, never
  printing anything;
- anywhere: `figure()` (a plain `go.Figure` with the same traces),
  `write_html(path)` (one self-contained file, plotly.js inline, no CDN) and
  `progress_line()` (the one-line summary for a terminal).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from rlkit.monitor.progress import as_float, format_progress, in_notebook

_COLS = 4  # panels per row


@dataclass(frozen=True)
class Panel:
    """One subplot: the stats keys it draws and how their traces are named."""

    title: str
    """Subplot title (with the unit)."""
    pattern: str
    """Regex that a stats key must match in full; its group `label` names the trace."""


# Order = position in the grid, row by row. A key matching no panel is kept in
# `history` (and in stats.jsonl by the RunLog) but not drawn.
PANELS: tuple[Panel, ...] = (
    Panel("stage time (s)", r"time/(?P<label>[^/]+)"),
    Panel("throughput (tokens/s)", r"throughput/(?P<label>[^/]+)_tokens_per_s"),
    Panel("host RSS (GiB)", r"memory/(?P<label>[^/]+)/rss_gib"),
    Panel("device memory peak (GiB)", r"memory/(?P<label>[^/]+)/device_max_gib"),
    Panel("reward / cost", r"(?P<label>reward|cost)/mean"),
    Panel("KL", r"actor/(?P<label>kl)"),
    Panel("entropy", r"actor/(?P<label>entropy)"),
    Panel("loss", r"(?P<label>actor/pg_loss|critic/vf_loss)"),
    Panel("eval", r"eval/(?P<label>[^/]+)"),
    Panel("grad norm", r"(?P<label>actor|critic)/grad_norm"),
    Panel("clip fraction", r"actor/(?P<label>clipfrac)"),
    Panel("response length (tokens)", r"response/(?P<label>length_mean)"),
    Panel("weight sync (bytes per engine)", r"weight_sync/(?P<label>bytes)"),
    Panel("rollout vs trainer", r"rollout_corr/(?P<label>kl|ratio_max)"),
    Panel("staleness (policy versions)", r"async/staleness_(?P<label>mean|max)"),
    Panel("pool idle fraction", r"pipeline/(?P<label>rollout|trainer)_idle_frac"),
    Panel("pool busy per step (s)", r"pipeline/(?P<label>rollout|trainer)_busy_seconds"),
    Panel("episodes (fraction)", r"env/(?P<label>success|done_frac|truncated_frac)"),
    Panel("episodes (per episode)", r"env/(?P<label>turns_mean|tool_calls|tool_errors)"),
)
_COMPILED = tuple(re.compile(panel.pattern) for panel in PANELS)


def panel_for(key: str) -> Optional[tuple[int, str]]:
    """(panel index, trace label) of a stats key, or None when no panel draws it."""
    for index, pattern in enumerate(_COMPILED):
        match = pattern.fullmatch(key)
        if match:
            return index, match.group("label")
    return None


@dataclass(frozen=True)
class _Trace:
    key: str  # stats key
    panel: int  # index into PANELS
    label: str  # legend name


class Dashboard:
    """Live plots of an RL run. `update(stage, stats)` once per stage call; see the module docstring."""

    def __init__(self, title: str = "rlkit", *, widget: Optional[bool] = None, total_steps: Optional[int] = None):
        """`widget`: draw a live FigureWidget (None: only inside a Jupyter kernel).
        `total_steps`: shown as `step n/total` in the progress line."""
        self.title = title
        """Figure title."""
        self.total_steps = total_steps
        """Steps of the run, for the progress line (None: unknown)."""
        self.num_updates = 0
        """How many times `update` was called."""
        self.stage_counts: Counter[str] = Counter()
        """Updates per stage name."""
        self.step = 0
        """The latest step seen (stats without `step` are drawn at this step)."""
        self.latest: dict[str, float] = {}
        """Latest value of every numeric stats key."""
        self._history: dict[str, tuple[list[int], list[float]]] = {}  # key -> (steps, values)
        self._traces: list[_Trace] = []  # in order of first appearance
        self._colors: dict[str, str] = {}  # label -> colour, one per label across panels
        self._widget = None  # go.FigureWidget in widget mode
        self._widget_index: dict[str, int] = {}  # key -> index in self._widget.data
        self._header = None  # ipywidgets.HTML above the figure
        self._box = None  # ipywidgets.VBox holding header + figure
        if widget is None:
            widget = in_notebook()
        if widget:
            self._build_widget()

    # ------------------------------------------------------------------ data

    @property
    def history(self) -> dict[str, tuple[list[int], list[float]]]:
        """Every numeric key seen: (steps, values), one point per step (a re-run stage replaces its point)."""
        return {key: (list(xs), list(ys)) for key, (xs, ys) in self._history.items()}

    @property
    def is_live(self) -> bool:
        """True when a FigureWidget is drawn and updated in place."""
        return self._widget is not None

    def update(self, stage: str, stats: Mapping[str, Any]) -> None:
        """Record one stage call's stats (`stage`: generate, prepare, learn, sync, eval ...) and redraw."""
        if not isinstance(stage, str) or not stage:
            raise ValueError(f"Dashboard.update: stage must be a non-empty str, got {stage!r}")
        if not isinstance(stats, Mapping):
            raise TypeError(
                f"Dashboard.update({stage!r}, stats): stats must be a flat dict of numbers, got "
                f"{type(stats).__name__}"
            )
        self.num_updates += 1
        self.stage_counts[stage] += 1
        if "step" in stats:
            step = as_float(stats["step"])
            if step is None:
                raise TypeError(f"Dashboard.update({stage!r}, stats): stats['step'] must be a number, "
                                f"got {stats['step']!r}")
            self.step = int(step)
        changed = []
        for key, raw in stats.items():
            value = as_float(raw)
            if key == "step" or value is None:  # strings and other non-numbers are not plotted
                continue
            self.latest[key] = value
            is_new = key not in self._history
            steps, values = self._history.setdefault(key, ([], []))
            if steps and steps[-1] == self.step:
                values[-1] = value  # a re-run stage replaces its point of this step
            else:
                steps.append(self.step)
                values.append(value)
            changed.append(key)
            if is_new:  # one trace per key, made when the key first appears
                self._register(key)
        if self._widget is not None:
            self._redraw(changed)

    def progress_line(self, total: Optional[int] = None) -> str:
        """One terminal line of the latest values: `step 3/10 | reward 0.42 | gen 512 tok/s | learn 1.2s`."""
        return format_progress({"step": self.step, **self.latest}, total if total is not None else self.total_steps)

    # --------------------------------------------------------------- figures

    def figure(self):
        """A plain plotly `go.Figure` of every panel (the same traces as the live widget)."""
        import plotly.graph_objects as go

        fig = go.Figure(self._layout_figure())
        for trace in self._traces:
            row, col = divmod(trace.panel, _COLS)
            fig.add_trace(self._scatter(trace), row=row + 1, col=col + 1)
        fig.update_layout(title=self._title_text())
        return fig

    def write_html(self, path: str | os.PathLike) -> Path:
        """Write the figure as ONE self-contained HTML file (plotly.js inline, works offline); returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().write_html(path, include_plotlyjs=True, full_html=True)
        return path

    def show(self) -> None:
        """Display the dashboard in a notebook (the live widget, else a static figure); no-op elsewhere."""
        if self._box is None and not in_notebook():
            return
        from IPython.display import display

        display(self._box if self._box is not None else self.figure())

    def _ipython_display_(self) -> None:
        self.show()

    # ------------------------------------------------------------- internals

    def _register(self, key: str) -> None:
        """A key seen for the first time: give it a trace if a panel draws it."""
        found = panel_for(key)
        if found is None:
            return
        panel, label = found
        trace = _Trace(key=key, panel=panel, label=label)
        self._traces.append(trace)
        if label not in self._colors:
            import plotly.colors

            palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3
            self._colors[label] = palette[len(self._colors) % len(palette)]
        if self._widget is not None:
            row, col = divmod(panel, _COLS)
            # add_trace cannot run inside batch_update: new traces are added first, data set after.
            self._widget.add_trace(self._scatter(trace), row=row + 1, col=col + 1)
            self._widget_index[key] = len(self._widget.data) - 1

    def _scatter(self, trace: _Trace):
        import plotly.graph_objects as go

        steps, values = self._history[trace.key]
        first_of_label = next(t for t in self._traces if t.label == trace.label) is trace
        return go.Scatter(
            x=list(steps),
            y=list(values),
            name=trace.label,
            # One legend entry per label: clicking "actor" hides the actor in every panel.
            legendgroup=trace.label,
            showlegend=first_of_label,
            mode="lines+markers",
            marker={"size": 4},
            line={"color": self._colors[trace.label]},
            hovertemplate=f"{trace.key}<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
        )

    def _layout_figure(self):
        from plotly.subplots import make_subplots

        rows = -(-len(PANELS) // _COLS)
        fig = make_subplots(
            rows=rows,
            cols=_COLS,
            subplot_titles=[panel.title for panel in PANELS],
            horizontal_spacing=0.06,
            vertical_spacing=0.12,
        )
        fig.update_layout(
            height=250 * rows + 80,
            margin={"l": 40, "r": 20, "t": 80, "b": 30},
            legend={"orientation": "h", "y": -0.06},
            template="plotly_white",
        )
        fig.update_annotations(font_size=12)
        return fig

    def _title_text(self) -> str:
        line = self.progress_line()
        return f"{self.title} — {line}" if self.num_updates else self.title

    def _build_widget(self) -> None:
        import ipywidgets
        import plotly.graph_objects as go

        self._widget = go.FigureWidget(self._layout_figure())
        self._widget.update_layout(title=self.title)
        self._header = ipywidgets.HTML(value=self._header_html())
        self._box = ipywidgets.VBox([self._header, self._widget])

    def _header_html(self) -> str:
        import html

        line = self.progress_line() if self.num_updates else "waiting for the first stage"
        stages = ", ".join(f"{name} ×{count}" for name, count in self.stage_counts.items())
        return (
            f"<b>{html.escape(self.title)}</b> &nbsp; <code>{html.escape(line)}</code>"
            + (f"<br><small>stage calls: {html.escape(stages)}</small>" if stages else "")
        )

    def _redraw(self, keys: list[str]) -> None:
        """Send the changed traces to the widget in one message."""
        with self._widget.batch_update():
            for key in keys:
                index = self._widget_index.get(key)
                if index is None:  # a key no panel draws
                    continue
                steps, values = self._history[key]
                self._widget.data[index].x = list(steps)
                self._widget.data[index].y = list(values)
        self._header.value = self._header_html()
