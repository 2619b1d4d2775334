"""Text, HTML and plotly views of a `Plan` (the CLI prints `format_plan`; notebooks show the HTML and figure)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from rlkit.planner.devices import GiB

if TYPE_CHECKING:  # pragma: no cover
    from rlkit.planner.mapping import Mapping, Plan


def _fmt_time(seconds: float) -> str:
    if seconds >= 100:
        return f"{seconds:.0f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.1f} ms"


def _fmt_bytes(nbytes: float) -> str:
    return f"{nbytes / GiB:.1f} GiB" if nbytes >= 0.1 * GiB else f"{nbytes / 2**20:.1f} MiB"


def _strategies(m: Mapping) -> str:
    parts = []
    for g in m.groups:
        for role, strat in zip(g.roles, g.strategies):
            gen = [c.note.split(",")[0] for c in g.calls if c.role == role and c.kind == "generate"]
            parts.append(f"{role}={strat.label}" + (f"/{gen[0]}" if gen else ""))
    return " ".join(parts)


def _rows(plan: Plan) -> list[dict[str, str]]:
    base = plan.colocated.throughput if plan.colocated is not None else None
    rows = []
    for rank, m in enumerate(plan.candidates, 1):
        row = {"#": str(rank), "placement": m.label}
        row.update({stage: _fmt_time(t) for stage, t in m.stage_times})
        row["iteration"] = _fmt_time(m.iteration_time)
        row["tokens/s"] = f"{m.throughput:,.0f}"
        row["vs colocated"] = f"{m.throughput / base:.2f}x" if base else "-"
        row["mem/device"] = _fmt_bytes(m.memory_per_device)
        row["strategies"] = _strategies(m)
        rows.append(row)
    return rows


def _header(plan: Plan) -> str:
    wl = plan.workload
    return (f"{plan.dataflow.name} on {plan.cluster.num_devices} x {plan.cluster.device.name} "
            f"({plan.cluster.nodes} nodes x {plan.cluster.devices_per_node}); "
            f"{wl.prompts} prompts x {wl.samples_per_prompt}, "
            f"prompt {wl.prompt_len} + response {wl.response_len} tokens; "
            f"models: " + ", ".join(f"{r}={m.name}" for r, m in plan.models.items()))


def format_plan(plan: Plan, top: int | None = 10) -> str:
    """A plain-text report: the best mapping, then the ranking (at most `top` rows)."""
    best = plan.best
    lines = [_header(plan), "",
             f"best: {best.label}  iteration {_fmt_time(best.iteration_time)}, {best.throughput:,.0f} tokens/s, "
             f"peak {_fmt_bytes(best.memory_per_device)} per device"
             + (f", {plan.speedup_vs_colocated:.2f}x the all-colocated mapping" if plan.colocated else "")]
    for g in best.groups:
        lines.append(f"  group {'+'.join(g.roles)} on {g.devices} devices "
                     f"(resident {_fmt_bytes(g.resident_per_device)}, peak {_fmt_bytes(g.memory_per_device)}):")
        for c in g.calls:
            strat = g.strategies[g.roles.index(c.role)].label
            lines.append(f"    {c.stage:<9} {c.role:<8} {c.kind:<9} {strat:<12} {_fmt_time(c.time):>9}"
                         + (f"  ({c.note})" if c.note else ""))
    rows = _rows(plan)[:top]
    cols = [k for k in rows[0] if k != "strategies"]
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in cols}
    lines += ["", f"ranking ({len(plan.candidates)} placements, {plan.mappings_scored} device splits scored "
                  f"in {plan.search_seconds:.1f} s):",
              "  ".join(k.ljust(widths[k]) for k in cols)]
    lines += ["  ".join(r[k].ljust(widths[k]) for k in cols) for r in rows]
    return "\n".join(lines)


def plan_html(plan: Plan, top: int | None = 15) -> str:
    """The ranking as an HTML table (the best row in bold), with the assumptions above it."""
    rows = _rows(plan)[:top]
    cols = list(rows[0])
    head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in cols)
    body = []
    for i, r in enumerate(rows):
        style = " style='font-weight:bold'" if i == 0 else ""
        body.append(f"<tr{style}>" + "".join(f"<td style='text-align:left'>{html.escape(r[c])}</td>" for c in cols)
                    + "</tr>")
    return (f"<div><p>{html.escape(_header(plan))}</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p><small>{len(plan.candidates)} placements, {plan.mappings_scored} device splits scored in "
            f"{plan.search_seconds:.1f} s; predicted by the analytical cost model of rlkit.planner.</small></p></div>")


def plan_figure(plan: Plan, top: int | None = 15):
    """A plotly bar chart: predicted stage times (stacked) of each candidate, fastest first."""
    import plotly.graph_objects as go

    cands = plan.candidates[:top]
    labels = [m.label for m in cands]
    fig = go.Figure()
    for i, stage in enumerate(s.name for s in plan.dataflow.stages):
        fig.add_bar(name=stage, x=labels, y=[m.stage_times[i][1] for m in cands],
                    hovertemplate="%{x}<br>" + stage + ": %{y:.3g} s<extra></extra>")
    fig.update_layout(barmode="stack", title=f"Predicted iteration time per placement ({plan.cluster})",
                      yaxis_title="seconds per iteration", xaxis_tickangle=-30, legend_title="stage")
    return fig
