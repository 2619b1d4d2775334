"""`rlkit.compare`: runs side by side, one subplot per metric, one line per run, and their config diff.

```python
cmp = rlkit.compare(["runs/grpo-a", "runs/ppo-a/wandb/offline-run-20260101_000000-abc123",
                     "my-team/rlkit/abc123"], metrics=["reward/mean", "actor/kl"])
cmp                  # in a notebook: the figure, then the table of config keys that differ
cmp.config_diff      # ConfigDiff: key -> value per run
cmp.write_html("compare.html")
```

A run is named by any of:
- an rlkit run directory (it has `stats.jsonl`; read without W&B),
- a local W&B run (`.../wandb/offline-run-*`, its `run-*.wandb` file, or a folder
  holding one run under `wandb/`),
- an online W&B run path `entity/project/run_id` (needs network and a login).
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from rlkit.monitor.progress import as_float

# Plotted by default (those present in at least one run), in this order.
HEADLINE_METRICS = (
    "reward/mean",
    "eval/accuracy",
    "actor/kl",
    "actor/entropy",
    "actor/pg_loss",
    "critic/vf_loss",
    "response/length_mean",
    "time/step",
)
_MAX_DEFAULT_METRICS = 12
_COLS = 3
_MISSING = object()  # a config key a run does not have


@dataclass
class RunData:
    """One run's history and config, whatever it was read from."""

    name: str
    """Legend name (unique within a comparison)."""
    source: str
    """"rlkit" (a run directory), "wandb-offline" or "wandb-online"."""
    location: str
    """The path or W&B run path it was read from."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run config, nested."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One flat dict per logged step, in order."""
    parent: dict[str, Any] = field(default_factory=dict)
    """A forked run's origin from its run.json: {"run": parent run directory, "step": fork step}; {} otherwise."""

    def series(self, metric: str, x: str = "step") -> tuple[list[float], list[float]]:
        """(x values, metric values) over the rows that have both as numbers. For x="step" a W&B row
        without a `step` entry uses its W&B step `_step`."""
        xs, ys = [], []
        for row in self.history:
            value = as_float(row.get(metric))
            x_value = row.get(x)
            if x_value is None and x == "step":
                x_value = row.get("_step")
            x_value = as_float(x_value)
            if value is not None and x_value is not None:
                xs.append(x_value)
                ys.append(value)
        return xs, ys

    def metric_names(self) -> list[str]:
        """Every key with a numeric value in some row, W&B's own (`_step` ...) left out."""
        names: dict[str, None] = {}
        for row in self.history:
            for key, value in row.items():
                if not key.startswith("_") and key not in names and as_float(value) is not None:
                    names[key] = None
        return list(names)


def load_run(spec: Any) -> RunData:
    """Read one run named as in the module docstring (a `RunData` is returned as is)."""
    if isinstance(spec, RunData):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"compare: a run is a path or a W&B run path, got {type(spec).__name__}")
    from rlkit.monitor.runlog import STATS_FILE, read_config, read_stats

    path = Path(spec)
    if path.is_dir() and (path / STATS_FILE).is_file():
        from rlkit.run_checkpoint import lineage

        return RunData(name=path.name, source="rlkit", location=str(path), config=read_config(path),
                       history=read_stats(path), parent=lineage(path))
    if path.exists():
        from rlkit.monitor.wandb_read import read_offline_run

        run = read_offline_run(path)
        return RunData(name=run.name, source="wandb-offline", location=str(path), config=run.config,
                       history=run.history)
    parts = str(spec).split("/")
    if len(parts) == 3 and all(parts):
        from rlkit.monitor.wandb_read import read_online_run

        run = read_online_run(str(spec))
        return RunData(name=run.name, source="wandb-online", location=str(spec), config=run.config,
                       history=run.history)
    raise FileNotFoundError(
        f"compare: {spec!r} is neither an rlkit run directory (with {STATS_FILE}), a local W&B run "
        f"(offline-run-* folder or .wandb file), nor a W&B run path entity/project/run_id"
    )


# ------------------------------------------------------------ config diff


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """{"actor": {"lr": 1e-5}} -> {"actor.lr": 1e-5}; lists and scalars are leaves."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _same(a: Any, b: Any) -> bool:
    # YAML and W&B json disagree on tuples vs lists and 1 vs 1.0: compare by value.
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    fa, fb = as_float(a), as_float(b)
    if fa is not None and fb is not None and not isinstance(a, str) and not isinstance(b, str):
        return fa == fb or (math.isnan(fa) and math.isnan(fb))
    return a == b


@dataclass
class ConfigDiff:
    """The config keys whose values differ between runs (a key absent from a run counts as different)."""

    runs: list[str]
    """Run names, one column each."""
    rows: list[tuple[str, list[Any]]]
    """(dotted key, value per run) for every differing key, sorted by key; `None` where a run lacks the key."""

    @classmethod
    def of(cls, runs: Sequence[RunData]) -> "ConfigDiff":
        flat = [flatten(run.config) for run in runs]
        keys = sorted(set().union(*flat)) if flat else []
        rows = []
        for key in keys:
            values = [f.get(key, _MISSING) for f in flat]
            first = values[0]
            if any(v is _MISSING for v in values) or not all(_same(first, v) for v in values[1:]):
                rows.append((key, [None if v is _MISSING else v for v in values]))
        return cls(runs=[run.name for run in runs], rows=rows)

    @property
    def keys(self) -> list[str]:
        """The differing keys."""
        return [key for key, _ in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{key: {run name: value}}."""
        return {key: dict(zip(self.runs, values)) for key, values in self.rows}

    def to_pandas(self):
        """A DataFrame, one row per key, one column per run (needs pandas)."""
        import pandas as pd

        return pd.DataFrame([values for _, values in self.rows], index=self.keys, columns=self.runs)

    def __str__(self) -> str:
        if not self.rows:
            return "configs are identical"
        return "\n".join(f"{key}: " + ", ".join(f"{run}={value!r}" for run, value in zip(self.runs, values))
                         for key, values in self.rows)

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<p><b>config diff</b>: the configs are identical</p>"
        head = "<th>key</th>" + "".join(f"<th>{html.escape(run)}</th>" for run in self.runs)
        body = "".join(
            f"<tr><td><code>{html.escape(key)}</code></td>"
            + "".join(f"<td>{'—' if v is None else html.escape(repr(v))}</td>" for v in values)
            + "</tr>"
            for key, values in self.rows
        )
        return (f"<p><b>config diff</b>: {len(self.rows)} keys differ</p>"
                f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


# ------------------------------------------------------------ comparison


def _unique_names(runs: list[RunData]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        count = seen.get(run.name, 0)
        seen[run.name] = count + 1
        if count:
            run.name = f"{run.name} ({count + 1})"


def _default_metrics(runs: Sequence[RunData], x: str) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.metric_names()))
    names.pop(x, None)
    names.pop("step", None)
    headline = [m for m in HEADLINE_METRICS if m in names]
    return headline or sorted(names)[:_MAX_DEFAULT_METRICS]


@dataclass
class Comparison:
    """Runs side by side: `figure` (one subplot per metric, one line per run) and `config_diff`."""

    runs: list[RunData]
    """The runs, in the order given."""
    metrics: list[str]
    """The plotted metrics, one subplot each."""
    x: str
    """The x-axis key ("step" by default)."""
    figure: Any
    """The plotly `go.Figure`."""
    config_diff: ConfigDiff
    """Config keys that differ between the runs."""

    def final(self) -> dict[str, dict[str, Optional[float]]]:
        """{run name: {metric: last logged value (None if never logged)}}."""
        out = {}
        for run in self.runs:
            out[run.name] = {}
            for metric in self.metrics:
                _, ys = run.series(metric, self.x)
                out[run.name][metric] = ys[-1] if ys else None
        return out

    def to_html(self) -> str:
        """One self-contained HTML fragment: the figure (plotly.js inline, offline) and the config diff."""
        return self.figure.to_html(full_html=False, include_plotlyjs=True) + self.config_diff._repr_html_()

    def write_html(self, path: str | os.PathLike) -> Path:
        """Write `to_html()` as a full page; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{self.to_html()}"
                        "</body></html>", encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return self.to_html()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.figure)  # plotly's own notebook renderer: no CDN in JupyterLab
        display(self.config_diff)


def compare(runs: Sequence[Any], metrics: Optional[Sequence[str] | str] = None, x: str = "step") -> Comparison:
    """Compare runs (paths / W&B run paths / RunData, see the module docstring) on `metrics`
    (default: the headline metrics any run has) against `x`."""
    if isinstance(runs, (str, os.PathLike, RunData)):
        runs = [runs]
    loaded = [load_run(spec) for spec in runs]
    if not loaded:
        raise ValueError("compare: got no runs")
    _unique_names(loaded)
    if metrics is None:
        metrics = _default_metrics(loaded, x)
    elif isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    available = sorted(set().union(*(run.metric_names() for run in loaded)))
    unknown = [m for m in metrics if m not in available]
    if unknown:
        raise ValueError(f"compare: metric(s) {unknown} were logged by none of the runs; they logged {available}")
    return Comparison(runs=loaded, metrics=metrics, x=x, figure=_figure(loaded, metrics, x),
                      config_diff=ConfigDiff.of(loaded))


def _figure(runs: list[RunData], metrics: list[str], x: str):
    import plotly.colors
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    cols = min(_COLS, max(len(metrics), 1))
    rows = max(-(-len(metrics) // cols), 1)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=metrics or ["(no metrics)"],
                        horizontal_spacing=0.07, vertical_spacing=0.14 if rows > 1 else 0.1)
    palette = plotly.colors.qualitative.Plotly + plotly.colors.qualitative.D3
    in_legend: set[str] = set()
    for i, metric in enumerate(metrics):
        row, col = divmod(i, cols)
        for j, run in enumerate(runs):
            xs, ys = run.series(metric, x)
            if not xs:
                continue
            fig.add_trace(
                go.Scatter(x=xs, y=ys, name=run.name, legendgroup=run.name, showlegend=run.name not in in_legend,
                           mode="lines+markers", marker={"size": 4}, line={"color": palette[j % len(palette)]},
                           hovertemplate=f"{run.name}<br>{x} %{{x}}: %{{y:.4g}}<extra>{metric}</extra>"),
                row=row + 1, col=col + 1,
            )
            in_legend.add(run.name)
    for j, run in enumerate(runs):  # a fork's first step is drawn where its parent's curve was cut
        if run.parent.get("step") is not None and x == "step":
            parent_name = Path(str(run.parent.get("run", "parent"))).name
            fig.add_vline(x=run.parent["step"], line={"dash": "dot", "color": palette[j % len(palette)], "width": 1},
                          annotation_text=f"{run.name}: fork of {parent_name} at step {run.parent['step']}",
                          annotation_font_size=9, row="all", col="all")
    fig.update_layout(height=280 * rows + 60, template="plotly_white", margin={"l": 40, "r": 20, "t": 60, "b": 30},
                      title=f"{len(runs)} runs: " + ", ".join(run.name for run in runs))
    fig.update_xaxes(title_text=x, row=rows)
    return fig
