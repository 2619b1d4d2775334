"""What each pool did when: a plotly timeline of the asynchronous pipeline's spans (`rlkit.pipeline`).

```python
s.pipeline.timeline_figure(last_steps=5)   # one row per pool: generate / load weights, prepare / learn
```
"""

from __future__ import annotations

from typing import Any

# One colour per kind of span, the same in every figure.
COLOURS = {"generate": "#1f77b4", "load_weights": "#aec7e8", "prepare": "#ff7f0e", "learn": "#d62728"}


def timeline_figure(spans: list[dict[str, Any]]):
    """Horizontal bars, one per span ({"pool", "what", "step", "start", "end"}), seconds from the first span."""
    import plotly.graph_objects as go

    fig = go.Figure()
    if not spans:
        fig.update_layout(title="pipeline timeline (no pipelined step yet)")
        return fig
    origin = min(x["start"] for x in spans)
    for what in dict.fromkeys(x["what"] for x in spans):
        chosen = [x for x in spans if x["what"] == what]
        fig.add_trace(go.Bar(
            y=[x["pool"] for x in chosen], x=[x["end"] - x["start"] for x in chosen],
            base=[x["start"] - origin for x in chosen], orientation="h", name=what,
            marker_color=COLOURS.get(what), text=[f"step {x['step']}" for x in chosen], textposition="inside",
            hovertemplate="%{text}: %{base:.2f} s + %{x:.2f} s<extra>" + what + "</extra>"))
    fig.update_layout(barmode="overlay", title="what each pool did (seconds since the first span)",
                      xaxis_title="seconds", height=260, margin=dict(l=60, r=20, t=40, b=40))
    return fig


__all__ = ["timeline_figure", "COLOURS"]
