"""pareto.html: a run's front as a plotly page that works offline, made for choosing the subnet to export.

Plotly draws everything (points, hover, zoom, the true/predicted switch, budget lines, the per-layer bars); the
page's own script only answers a click on a front point with that subnet's layers and its `jcw export` command.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from jcw.io import write_text
from jcw.search.archive import describe, genomes_from_column, sparse_members
from jcw.search.rundir import RunDir, RunRecord
from jcw.space import SearchSpace

FRONT_TRUE, FRONT_PREDICTED = "Pareto front (true top-1)", "Pareto front (predicted top-1)"
HOVER = ("id %{customdata[0]}<br>%{x:.4f} ms<br>true top-1 %{customdata[1]}<br>predicted %{customdata[2]}"
         "<br>%{customdata[3]} params, %{customdata[4]} MACs<br>mean density %{customdata[5]}<extra></extra>")


def _hover_data(frame: pd.DataFrame, space: SearchSpace) -> np.ndarray:
    """Per point, as text: id, true and predicted top-1, params, MACs, mean density, kept channels, densities.

    One string array rather than mixed lists: plotly copies an array in one step, where it walks mixed lists value
    by value (a second per page for a search's 4,400 candidates)."""
    details = describe(space, genomes_from_column(frame["genome"]))
    percent = {c: [f"{v:.2f}%" if v == v else "not scored" for v in frame[c]] for c in ("true_top1", "predicted_top1")}
    return np.array([frame["id"].astype(str), percent["true_top1"], percent["predicted_top1"],
                     [f"{v:,}" for v in details["params"]], [f"{v:,}" for v in details["macs"]],
                     [f"{v:g}" for v in details["mean_density"]], details["channels"], details["densities"]]).T


def front_page(run: str | Path, space: SearchSpace, record: RunRecord | None = None) -> go.Figure:
    """The interactive figure of a run: candidates (faint), uniform references, the front with ids, the budgets,
    and a switch between true and predicted top-1. In a notebook it shows inline."""
    record = record or RunDir(run).read()
    history, pareto, options = record.history, record.pareto, record.config["options"]
    search = history[history["kind"] == "search"]
    front = pareto.rename(columns={"top1": "true_top1"})
    uniform = history[history["uniform"] & history["true_top1"].notna()].sort_values("latency_ms")
    predicted = bool(search["predicted_top1"].notna().any())
    fig = go.Figure()
    fig.add_scatter(x=search["latency_ms"], y=search["predicted_top1" if predicted else "true_top1"],
                    mode="markers", name="candidates" + (" (predicted top-1)" if predicted else ""),
                    marker=dict(size=4, color="rgba(31,119,180,0.15)"), customdata=_hover_data(search, space),
                    hovertemplate=HOVER)
    fig.add_scatter(x=uniform["latency_ms"], y=uniform["true_top1"], mode="lines+markers",
                    name="uniform width, dense (true top-1)", line=dict(dash="dash", color="gray"),
                    marker=dict(symbol="square", size=6), customdata=_hover_data(uniform, space),
                    hovertemplate=HOVER)
    # sparse members as open diamonds: what a joint search adds over channel pruning
    symbols = np.where(sparse_members(front), "diamond-open", "circle")
    for name, column, visible in ((FRONT_TRUE, "true_top1", True), (FRONT_PREDICTED, "predicted_top1", False)):
        fig.add_scatter(x=front["latency_ms"], y=front[column], mode="lines+markers+text", name=name,
                        text=[str(i) for i in front["id"]], textposition="top center", visible=visible,
                        marker=dict(size=10, symbol=symbols, line=dict(width=2),
                                    color="crimson" if visible else "darkorange"),
                        customdata=_hover_data(front, space), hovertemplate=HOVER)
    for b in options["budgets_ms"]:
        fig.add_vline(x=b, line=dict(color="black", dash="dot", width=1), annotation_text=f"{b:g} ms")
    sparse = int(sparse_members(front).sum())
    fig.update_layout(
        title=f"{Path(run).name}: {len(pareto)} front members ({sparse} with sparse weights, open diamonds) on "
              f"{options['device']} "
              f"({record.config.get('table', {}).get('source', '?')} latency table)",
        xaxis_title=f"latency on {options['device']} (ms)", yaxis_title="validation top-1 (%)",
        template="plotly_white", hovermode="closest", height=560,
        updatemenus=[dict(type="buttons", direction="right", x=0, y=1.12, xanchor="left", buttons=[
            dict(label="true top-1", method="restyle", args=[{"visible": [True, True, True, False]}]),
            dict(label="predicted top-1", method="restyle", args=[{"visible": [True, True, False, True]}])])])
    return fig


def write_page(run: str | Path, space: SearchSpace, record: RunRecord | None = None) -> Path:
    """RUN/pareto.html, with plotly.js inside (no network needed)."""
    run = Path(run)
    full = [int(w) for w in space.widths(space.largest()[None])[0]]
    body = front_page(run, space, record).to_html(
        full_html=False, include_plotlyjs=True, div_id="front",
        post_script=_ON_CLICK.replace("__RUN__", json.dumps(str(run))).replace("__FULL__", json.dumps(full)))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{run.name}</title></head>"
            f"<body style='font-family:sans-serif'>{body}<div id='pick' style='display:none'>"
            "<pre id='command'></pre><button id='copy'>copy</button><div id='layers'></div></div></body></html>")
    path = run / "pareto.html"
    write_text(path, page)
    return path


# The one thing plotly does not do by itself: a click on a front point shows its layers and its export command.
_ON_CLICK = """
const gd = document.getElementById('{plot_id}'), run = __RUN__, full = __FULL__;
// A candidate drawn within a few pixels of a front point can win plotly's hover: the front point under it still counts.
const frontPoint = ev => {
  const p = ev.points.find(q => q.data.name.startsWith('Pareto front'));
  if (p) return p.customdata;
  const q = ev.points[0], front = gd._fullData.find(t => t.name.startsWith('Pareto front') && t.visible === true);
  if (!q || !front) return null;
  const x = Array.from(front.x), y = Array.from(front.y);  // the decoded arrays (gd.data holds them base64-packed)
  const dist = i => Math.hypot(q.xaxis.d2p(x[i]) - q.xaxis.d2p(q.x), q.yaxis.d2p(y[i]) - q.yaxis.d2p(q.y));
  const near = x.map((_, i) => i).filter(i => dist(i) <= 6).sort((a, b) => dist(a) - dist(b));
  return near.length ? front.customdata[near[0]] : null;
};
gd.on('plotly_click', ev => {
  const member = frontPoint(ev);
  if (!member) return;
  const [id, , , , , , channels, densities] = member;
  const command = `jcw export ${run} --id ${id}`;
  document.getElementById('pick').style.display = 'block';
  document.getElementById('command').textContent = command;
  document.getElementById('copy').onclick = () => navigator.clipboard.writeText(command);
  const kept = channels.split('-').map(Number), groups = kept.map((_, i) => `group ${i}`);
  const bars = [{type: 'bar', name: 'kept channels', x: groups, y: kept}];
  bars.unshift({type: 'bar', name: 'full network', x: groups, y: full, marker: {color: '#ccc'}});
  bars.push({type: 'bar', name: 'weight density', x: densities.split('-').map((_, i) => `sparse layer ${i}`),
             y: densities.split('-').map(Number), xaxis: 'x2', yaxis: 'y2'});
  Plotly.newPlot('layers', bars, {title: `subnet ${id}`, grid: {rows: 1, columns: 2, pattern: 'independent'},
                                  barmode: 'overlay', height: 320});
});
"""
