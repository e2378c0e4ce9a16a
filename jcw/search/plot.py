"""pareto.png (and pareto.html) from a run folder's CSVs, so `jcw plot RUN` can redraw them any time."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from jcw.io import atomic_path, write_text
from jcw.search.rundir import RunDir


def plot_run(run: str | Path, budgets_ms: list[float] | None = None, device: str | None = None) -> Path:
    """Write RUN/pareto.png and RUN/pareto.html; return the png's path."""
    import matplotlib.pyplot as plt

    record = RunDir(run).read()  # once: history.csv holds every candidate of the run
    fig = front_figure(run, budgets_ms, device, record)
    png = Path(run) / "pareto.png"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    _write_html(Path(run), record.pareto, device or record.config["options"]["device"])
    return png


def front_figure(run: str | Path, budgets_ms: list[float] | None = None, device: str | None = None, record=None):
    """The matplotlib figure of a run's candidates, uniform baselines and front, every member labelled by id."""
    import matplotlib  # heavy optional plotting: imported only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = record or RunDir(run).read()
    run, history, pareto, config = Path(run), record.history, record.pareto, record.config
    budgets_ms = budgets_ms or config["options"]["budgets_ms"]
    device = device or config["options"]["device"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    search = history[history["kind"] == "search"]
    y = search["predicted_top1"].where(search["predicted_top1"].notna(), search["true_top1"])
    ax.scatter(search["latency_ms"], y, s=5, color="tab:blue", alpha=0.12, label="candidates (predicted top-1)")
    uniform = history[history["uniform"]].sort_values("latency_ms")
    if not uniform.empty:
        ax.plot(uniform["latency_ms"], uniform["true_top1"], "s--", color="tab:gray", ms=4,
                label="uniform width, dense (true top-1)")
    ax.plot(pareto["latency_ms"], pareto["top1"], "o-", color="tab:red", ms=5, label="Pareto front (true top-1)")
    for row in pareto.itertuples():
        ax.annotate(str(row.id), (row.latency_ms, row.top1), textcoords="offset points", xytext=(3, 4), fontsize=7)
    for b in budgets_ms:
        ax.axvline(b, color="black", lw=0.8, ls=":")
        ax.text(b, ax.get_ylim()[0], f" {b:g} ms", rotation=90, va="bottom", fontsize=8)
    lo = min(pareto["top1"].min(), uniform["true_top1"].min() if not uniform.empty else 100)
    ax.set_ylim(max(0, lo - 3), min(100, max(pareto["top1"].max(), y.max()) + 1))
    ax.set_xlabel(f"latency on {device} (ms, from its {config['table'].get('source', '?')} table)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{run.name}: {len(pareto)} front members")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _write_html(run: Path, pareto: pd.DataFrame, device: str) -> None:
    """A dependency-free page: hover a point to see its id, latency, top-1 and layer widths."""
    points = pareto[["id", "latency_ms", "top1", "channels", "densities"]].to_dict("records")
    page = _HTML.replace("__DATA__", json.dumps(points)).replace("__TITLE__", f"{run.name} on {device}")
    write_text(run / "pareto.html", page)


_HTML = """<!doctype html><meta charset="utf-8"><title>__TITLE__</title>
<style>body{font:14px sans-serif;margin:20px}#tip{position:absolute;background:#fff;border:1px solid #999;
padding:6px;display:none;max-width:520px;word-break:break-all}</style>
<h3>__TITLE__</h3><svg id="plot" width="800" height="480"></svg><div id="tip"></div>
<script>
const pts = __DATA__, W = 800, H = 480, M = 50, svg = document.getElementById('plot'), tip = document.getElementById('tip');
const xs = pts.map(p => p.latency_ms), ys = pts.map(p => p.top1);
const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
const sx = v => M + (v - x0) / ((x1 - x0) || 1) * (W - 2 * M), sy = v => H - M - (v - y0) / ((y1 - y0) || 1) * (H - 2 * M);
let s = `<text x="${W/2}" y="${H-10}">latency (ms)</text><text x="5" y="20">top-1 (%)</text>`;
s += `<polyline fill="none" stroke="#c33" points="${pts.map(p => sx(p.latency_ms)+','+sy(p.top1)).join(' ')}"/>`;
pts.forEach((p, i) => s += `<circle data-i="${i}" cx="${sx(p.latency_ms)}" cy="${sy(p.top1)}" r="6" fill="#c33"/>`);
s += `<text x="${M}" y="${H-M+20}">${x0.toFixed(3)}</text><text x="${W-M-40}" y="${H-M+20}">${x1.toFixed(3)}</text>`;
s += `<text x="5" y="${H-M}">${y0.toFixed(2)}</text><text x="5" y="${M}">${y1.toFixed(2)}</text>`;
svg.innerHTML = s;
svg.addEventListener('mousemove', e => { const i = e.target.dataset.i; if (i === undefined) { tip.style.display = 'none'; return; }
  const p = pts[i]; tip.style.display = 'block'; tip.style.left = (e.pageX + 12) + 'px'; tip.style.top = (e.pageY + 12) + 'px';
  tip.innerHTML = `<b>id ${p.id}</b><br>${p.latency_ms.toFixed(4)} ms, top-1 ${p.top1.toFixed(2)}%<br>channels ${p.channels}<br>densities ${p.densities}`; });
</script>"""
