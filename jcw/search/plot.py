"""pareto.png and pareto.html from a run folder's CSVs, so `jcw plot RUN` can redraw them any time; several runs'
fronts on one chart; one subnet's layers as bars."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from jcw.errors import JcwError
from jcw.io import atomic_path, write_text
from jcw.search.archive import sparse_members, spread_pick
from jcw.search.page import write_page
from jcw.search.rundir import RunDir, RunRecord
from jcw.space import SearchSpace

MAX_LABELS = 12  # ids written on the png; the page labels every member
SPARSE_LABEL = "front member with sparse weights (mean density < 1)"


def _pyplot():
    import matplotlib  # heavy optional plotting: imported only when a plot is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)
    return path


def run_space(record: RunRecord) -> SearchSpace:
    """The search space a run searched, as its config.json keeps it: redrawing needs no torch and no supernet file."""
    resolved = record.config["resolved"]
    if "definition" not in resolved["space"]:
        raise JcwError("this run's config.json predates kept search spaces: pass its supernet's, "
                       f"space=load_supernet({resolved['supernet']!r}).space (`jcw plot` does)")
    return SearchSpace.from_dict(resolved["space"]["definition"])


def plot_run(run: str | Path, space: SearchSpace | None = None) -> Path:
    """Write RUN/pareto.png and RUN/pareto.html; return the png's path."""
    record = RunDir(run).read()  # once: history.csv holds every candidate of the run
    space = space or run_space(record)
    png = _save(front_figure(run, record), Path(run) / "pareto.png")
    write_page(run, space, record)
    return png


def labelled_ids(pareto: pd.DataFrame, picks: list[int]) -> list[int]:
    """Front ids written on the png: spread over the latency range, and every per-budget pick."""
    spread = pareto["id"].to_numpy()[spread_pick(pareto["latency_ms"].to_numpy(), MAX_LABELS)]
    return sorted(set(int(i) for i in spread) | set(picks))


def front_figure(run: str | Path, record: RunRecord | None = None):
    """The matplotlib figure of a run: candidates, uniform baselines, the front (a readable subset of ids written),
    the budgets; every plotted point inside the axes."""
    plt = _pyplot()
    record = record or RunDir(run).read()
    run, history, pareto, config = Path(run), record.history, record.pareto, record.config
    summary = run / "summary.csv"
    picks = [int(i) for i in pd.read_csv(summary)["id"].dropna()] if summary.exists() else []
    fig, ax = plt.subplots(figsize=(8, 5.5))
    search = history[history["kind"] == "search"]
    y = search["predicted_top1"].where(search["predicted_top1"].notna(), search["true_top1"])
    ax.scatter(search["latency_ms"], y, s=5, color="tab:blue", alpha=0.12, label="candidates (predicted top-1)")
    uniform = history[history["uniform"] & history["true_top1"].notna()].sort_values("latency_ms")
    ax.plot(uniform["latency_ms"], uniform["true_top1"], "s--", color="tab:gray", ms=4,
            label="uniform width, dense (true top-1)")
    ax.plot(pareto["latency_ms"], pareto["top1"], "o-", color="tab:red", ms=5, label="Pareto front (true top-1)")
    sparse = pareto[sparse_members(pareto)]
    if len(sparse):  # what a joint search adds over channel pruning, and what export stores sparse
        ax.plot(sparse["latency_ms"], sparse["top1"], "D", color="darkred", ms=7, mfc="white", mew=1.5,
                label=SPARSE_LABEL)
    xs = pd.concat([pareto["latency_ms"], uniform["latency_ms"]])
    ys = pd.concat([pareto["top1"], uniform["true_top1"]])
    budgets = config["options"]["budgets_ms"]
    ax.set_xlim(min(xs.min(), min(budgets)) * 0.9, max(xs.max(), max(budgets)) * 1.05)
    ax.set_ylim(ys.min() - 1.5, min(100.0, max(ys.max(), y.max()) + 1))
    for b in budgets:  # labelled at the top: the legend sits at the bottom right
        ax.axvline(b, color="black", lw=0.8, ls=":")
        ax.text(b, ax.get_ylim()[1], f" {b:g} ms budget", rotation=90, va="top", fontsize=8)
    device = config["options"]["device"]
    ax.set_xlabel(f"latency on {device} (ms)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{run.name}: {len(pareto)} front members ({len(sparse)} sparse) on {device} "
                 f"({config['table'].get('source', '?')} latency table)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _label_front(fig, ax, pareto, picks)
    return fig


LABEL_OFFSETS = ((0, 6), (0, -11), (0, 15), (0, -20))  # points: above, below, then further out


def _label_front(fig, ax, pareto: pd.DataFrame, picks: list[int]) -> None:
    """Write the labelled ids beside their points, picks first, each at the first offset where it overlaps no label
    already written; an id with no free place is left out, unless it is a pick."""
    renderer = fig.canvas.get_renderer()
    ids = labelled_ids(pareto, picks)
    rows = pareto.set_index("id").loc[sorted(ids, key=lambda i: (i not in picks, i))]
    placed = []
    for pid, row in rows.iterrows():
        for k, offset in enumerate(LABEL_OFFSETS):
            text = ax.annotate(str(pid), (row.latency_ms, row.top1), textcoords="offset points", fontsize=7,
                               xytext=offset, ha="center")
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed) or (pid in picks and k == len(LABEL_OFFSETS) - 1):
                placed.append(box)
                break
            text.remove()


def _fronts(runs: list[str | Path]) -> list[tuple[str, str, pd.DataFrame]]:
    """Each run's legend label, device and true front, read once for both the png and the page."""
    out = []
    for run in runs:
        record = RunDir(run).read()
        options = record.config["options"]
        out.append((f"{run} ({options.get('genes', 'joint')}, {options['device']})", options["device"],
                    record.pareto.sort_values("latency_ms")))
    return out


def compare_figure(runs: list[str | Path], fronts: list | None = None):
    """Several runs' true fronts on one chart (joint against channels only, or one network on two devices)."""
    plt = _pyplot()
    fronts = fronts or _fronts(runs)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, _, front in fronts:
        ax.plot(front["latency_ms"], front["top1"], "o-", ms=4, label=f"{label}: {len(front)} members")
    ax.set_xlabel(f"latency on {', '.join(sorted({device for _, device, _ in fronts}))} (ms)")
    ax.set_ylabel("validation top-1 (%)")
    ax.set_title(f"{len(fronts)} runs' true fronts", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_compare(runs: list[str | Path], out: str | Path) -> tuple[Path, Path]:
    """OUT.png and OUT.html: several runs' fronts, one legend entry each."""
    out, fronts = Path(out), _fronts(runs)
    png = _save(compare_figure(runs, fronts), out.with_suffix(".png"))
    page = go.Figure()
    for label, _, front in fronts:
        page.add_scatter(x=front["latency_ms"], y=front["top1"], mode="lines+markers", text=front["id"],
                         name=label, hovertemplate="id %{text}<br>%{x:.4f} ms<br>top-1 %{y:.2f}%")
    page.update_layout(template="plotly_white", xaxis_title="latency (ms)", yaxis_title="validation top-1 (%)")
    html = out.with_suffix(".html")
    write_text(html, page.to_html(include_plotlyjs=True))
    return png, html


def plot_member(run: str | Path, subnet_id: int, space: SearchSpace | None = None) -> Path:
    """RUN/layers-ID.png: one subnet's kept channels per group against the full network, and its densities."""
    plt = _pyplot()
    rundir = RunDir(run)
    record = rundir.read()
    space = space or run_space(record)
    _, genome = rundir.member(record.history, subnet_id)
    kept, full = space.widths(genome[None])[0], space.widths(space.largest()[None])[0]
    dens = space.density_values(genome[None])[0]
    if len(kept) == 0:
        raise JcwError(f"subnet {subnet_id} has no channel groups to draw")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    idx = np.arange(len(kept))
    a.bar(idx, full, color="lightgray", label="full network")
    a.bar(idx, kept, color="tab:red", label="kept")
    a.set_xlabel("channel group")
    a.set_ylabel("channels")
    a.legend(fontsize=8)
    b.bar(np.arange(len(dens)), dens, color="tab:blue")
    b.set_ylim(0, 1)
    b.set_xlabel("sparse layer")
    b.set_ylabel("weight density")
    fig.suptitle(f"{Path(run).name}: subnet {subnet_id}", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(run) / f"layers-{subnet_id}.png")
