"""Densities as XNNPACK runs them: one shared by its sparse subgraph's 1x1 convs, and none it would run dense.

XNNPACK runs a subgraph's 1x1 convs sparse only as a whole, and only when their weights together are more than two
thirds zero. With one density gene per layer, a random or mutated genome almost never gets all of them that far, so
the genes are tied: the search copies the first into the others in every genome pymoo asks it to price (RESULTS.md
section 10 measures the tie against independent genes).

A shared density short of the threshold buys no time, since XNNPACK runs it dense, but its zeros still cost
accuracy, and a noisy few of them win on a small validation split anyway and reach the front, where they trail their
dense twins on the test split (RESULTS.md section 14). Such genomes are repaired to dense, so every front member's
zeros are zeros the phone skips.
"""
from __future__ import annotations

import numpy as np
from pymoo.core.repair import Repair

from jcw.latency.table import BoundTable
from jcw.xnnpack import shared_density_genes, tie_densities


class XnnpackDensities(Repair):
    def __init__(self, bound: BoundTable):
        super().__init__()
        self.bound = bound
        subgraph = bound.subgraph
        tied = subgraph is not None and subgraph.possible and "threshold" not in bound.relaxed
        self.genes = shared_density_genes(bound.space, subgraph) if tied else []

    def note(self) -> str:
        """One line for the search's log where genes are tied, else ''."""
        if len(self.genes) < 2:
            return ""
        others = len(self.bound.space.sparse) - len(self.genes)
        return (f"note: XNNPACK runs only its NCHW subgraph's {len(self.genes)} 1x1 convs sparse, and only as a whole: "
                "they share one density gene, dense where it would leave two thirds of their weights or fewer zero"
                + (f"; the other {others} sparse layers stay dense" if others else ""))

    def _do(self, problem, X, **kwargs):
        X = np.rint(X).astype(np.int64)
        if self.genes:
            X = tie_densities(X, self.genes)
            X[np.ix_(~self.bound.runs_sparse(X), self.genes)] = 0
        return X
