"""The archive of every evaluated subnet, and its Pareto front (latency down, top-1 up)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from jcw.space import SearchSpace


def pareto_mask(latency: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """True for members no other member beats on both latency and top-1 (ties broken by first seen)."""
    order = np.lexsort((-top1, latency))  # by latency, then best top-1 first
    keep = np.zeros(len(latency), dtype=bool)
    best = -np.inf
    for i in order:
        if top1[i] > best:
            keep[i] = True
            best = top1[i]
    return keep


def on_front_with_ties(latency: np.ndarray, top1: np.ndarray) -> np.ndarray:
    """True for members no other member beats on one objective while matching the other: `pareto_mask` with its
    ties kept, for what must hold whichever of two equal members the front ends up keeping."""
    lat, top = np.asarray(latency, dtype=float)[:, None], np.asarray(top1, dtype=float)[:, None]
    beaten = (lat.T <= lat) & (top.T >= top) & ((lat.T < lat) | (top.T > top))
    return ~beaten.any(axis=1)


def spread_pick(latency: np.ndarray, k: int) -> np.ndarray:
    """Indices of at most `k` members spread evenly over the latency range (always both ends)."""
    if len(latency) <= k:
        return np.arange(len(latency))
    order = np.argsort(latency, kind="stable")
    picks = np.unique(np.rint(np.linspace(0, len(order) - 1, k)).astype(int))
    return order[picks]


def spread_front(latency: np.ndarray, top1: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """At most `k` members of the Pareto front among `candidates` (row indices), spread over its latency range: the
    ones refinement and the final re-scoring spend supernet time on."""
    front = candidates[pareto_mask(latency[candidates], top1[candidates])]
    return front[spread_pick(latency[front], k)]


def describe(space: SearchSpace, genomes: np.ndarray) -> pd.DataFrame:
    """Readable columns for a set of genomes: params, MACs, mean density, channels, densities, genome."""
    g = np.asarray(genomes).reshape(-1, space.n_genes)
    cost = space.cost(g)
    widths, dens = space.widths(g), space.density_values(g)
    return pd.DataFrame({
        "params": cost["params"].round().astype(np.int64),
        "macs": cost["macs"].round().astype(np.int64),
        "mean_density": dens.mean(axis=1).round(4) if dens.shape[1] else np.ones(len(g)),
        "channels": [SearchSpace.format_readable(w) for w in widths],
        "densities": [SearchSpace.format_readable(f"{v:g}" for v in d) for d in dens],
        "genome": [json.dumps([int(x) for x in row]) for row in g],
    })


def sparse_members(frame: pd.DataFrame) -> pd.Series:
    """Which rows (of pareto.csv, or any frame with `describe`'s columns) keep sparse weights: what a joint search
    adds over channel pruning. A density the table's runtime would run dense never reaches the front."""
    return frame["mean_density"] < 1


def genomes_from_column(column: pd.Series) -> np.ndarray:
    return np.array([json.loads(s) for s in column], dtype=np.int64)


def hypervolume(latency: np.ndarray, top1: np.ndarray, ref_latency: float,
                floor_top1: float = 0.0) -> float:
    """Area dominated by the front, normalised to 0..1, against the reference point (ref_latency, floor_top1).

    A floor near the accuracies that matter (e.g. 80% on Fashion-MNIST) makes differences between fronts visible.
    """
    from pymoo.indicators.hv import HV

    inside = (latency <= ref_latency) & (top1 > floor_top1)
    if not inside.any():
        return 0.0
    F = np.stack([latency[inside] / ref_latency, (100 - top1[inside]) / (100 - floor_top1)], axis=1)
    return float(HV(ref_point=np.array([1.0, 1.0]))(F))


def best_within_budget(frame: pd.DataFrame, budget_ms: float, score: str = "top1") -> pd.Series | None:
    """The row with the highest `score` among those within the budget (None if none is)."""
    ok = frame[(frame["latency_ms"] <= budget_ms) & frame[score].notna()]
    return None if ok.empty else ok.loc[ok[score].idxmax()]
