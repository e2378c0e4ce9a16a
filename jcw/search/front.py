"""The end of a search: the predicted front re-scored on the supernet beside uniform-width references, then the
run's tables, plot and exported picks.

Only true top-1 (scored on the supernet) decides the written front and each budget's pick, among every subnet scored
so, references included; the picks are also scored on the test split, since a member chosen on validation images is
overrated there.
"""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jcw.config import SearchConfig
from jcw.search.archive import best_within_budget, describe, genomes_from_column, pareto_mask, spread_front
from jcw.search.members import export_member
from jcw.search.plot import plot_run
from jcw.search.rundir import RunDir
from jcw.supernet.subnet import read_subnet_metadata


@dataclass
class SearchResult:
    out: Path
    pareto: pd.DataFrame
    history: pd.DataFrame
    summary: pd.DataFrame


def score_column(history: pd.DataFrame, predicted: bool) -> np.ndarray:
    return (history["predicted_top1"] if predicted else history["true_top1"]).to_numpy(dtype=float)


def uniform_genomes(space, upper: np.ndarray) -> np.ndarray:
    """Uniform-width reference subnets, dense: every group at the same fraction of its base width."""
    return np.unique(np.array([np.minimum(space.uniform(r), upper) for r in np.linspace(1.0, 0.25, 7)]), axis=0)


def rescore_front(cfg: SearchConfig, ctx, history: pd.DataFrame) -> pd.DataFrame:
    """True top-1 for the predicted front (spread picks, at most cfg.rescore) and the uniform-width references.

    References the search never visited are appended with kind "reference"; `uniform` marks them all. Of those over
    the largest budget only the cheapest is kept, to show where uniform width crosses it: the rest would cost
    scoring time and say nothing about the budget.
    """
    history = history.assign(kind="search")
    uniform = uniform_genomes(ctx.space, ctx.upper)
    lat = ctx.bound.latency(uniform)
    keep = lat <= cfg.largest_budget_ms
    if not keep.all():
        keep[np.flatnonzero(~keep)[np.argmin(lat[~keep])]] = True
    refs = [json.dumps([int(v) for v in g]) for g in uniform[keep]]
    missing = [r for r in refs if r not in set(history["genome"])]
    if missing:
        genomes = genomes_from_column(pd.Series(missing))
        extra = pd.DataFrame({"id": np.arange(len(history), len(history) + len(missing)), "generation": -1,
                              "latency_ms": ctx.bound.latency(genomes),
                              "predicted_top1": ctx.predictor.predict(genomes) if ctx.predictor else np.nan,
                              "true_top1": np.nan, "genome": missing, "kind": "reference"})
        history = pd.concat([history, extra], ignore_index=True)
    history["uniform"] = history["genome"].isin(refs)
    lat = history["latency_ms"].to_numpy()
    candidates = np.flatnonzero((lat <= cfg.largest_budget_ms) & (history["kind"] == "search").to_numpy())
    score = score_column(history, ctx.predictor is not None)
    picks = spread_front(lat, score, candidates, cfg.rescore)
    todo = [i for i in np.concatenate([picks, np.flatnonzero(history["uniform"].to_numpy())])
            if np.isnan(history.at[i, "true_top1"])]
    if todo:
        genomes = genomes_from_column(history.loc[todo, "genome"])
        history.loc[todo, "true_top1"] = ctx.true_top1(genomes, "re-scoring the front on the supernet",
                                                       "final re-scoring")
    return history


def write_outputs(cfg: SearchConfig, ctx, out: RunDir, history: pd.DataFrame) -> SearchResult:
    # every subnet scored on the supernet competes, the uniform references the search never visited too: a budget
    # that only a reference meets gets that reference, not "no subnet fits"
    scored = history[history["true_top1"].notna() & (history["latency_ms"] <= cfg.largest_budget_ms)]
    keep = pareto_mask(scored["latency_ms"].to_numpy(), scored["true_top1"].to_numpy())
    front = scored[keep].sort_values("latency_ms")
    details = describe(ctx.space, genomes_from_column(front["genome"]))
    pareto = pd.DataFrame({"id": front["id"].to_numpy(), "latency_ms": front["latency_ms"].round(6).to_numpy(),
                           "top1": front["true_top1"].round(4).to_numpy(),
                           "predicted_top1": front["predicted_top1"].round(4).to_numpy()})
    pareto = pd.concat([pareto, details], axis=1)
    summary_rows = []
    for b in cfg.budgets_ms:
        best = best_within_budget(pareto, b)
        row = ({"id": None, "latency_ms": None, "top1": None} if best is None else
               {"id": int(best["id"]), "latency_ms": float(best["latency_ms"]), "top1": float(best["top1"])})
        # a budget the largest subnet meets says nothing about the space: the summary keeps that beside the pick
        summary_rows.append({"budget_ms": b, **row, "test_top1": None, "largest_fits": b >= ctx.largest_ms})
    summary = pd.DataFrame(summary_rows)
    out.write_tables(history, pareto, summary)
    # the plot reads only the tables just written: it is drawn here while the scoring pool tests the picks
    with ThreadPoolExecutor(1) as background:
        plotted = background.submit(plot_run, out.path, ctx.space)
        if cfg.export:  # each pick, with its top-1 on the test split: it was chosen on the validation images
            for i, row in summary.dropna(subset=["id"]).iterrows():
                genome = genomes_from_column(history.loc[history["id"] == row["id"], "genome"])[0]
                path = export_member(out, int(row["id"]), supernet=ctx.supernet, device=cfg.device, test=True,
                                     accel=ctx.supernet_accel, data=getattr(ctx.evaluator, "data", None),
                                     tested=ctx.test_score(genome))
                summary.at[i, "test_top1"] = read_subnet_metadata(path)["test_top1"]
            out.write_summary(summary)
        plotted.result()
    return SearchResult(out=out.path, pareto=pareto, history=history, summary=summary)
