"""One density for the 1x1 convs of XNNPACK's sparse subgraph.

XNNPACK runs a subgraph's 1x1 convs sparse only when their weights together are more than two thirds zero. With one
density gene per layer, a random or mutated genome almost never gets all of them that far, so the density genes
cost accuracy, buy no time and dilute the search. benchmarks/RESULTS.md section 10: with the stem rule relaxed,
independent genes put the joint front 0.014 below channels alone; one shared density put it 0.022 above. The search
copies the first of those genes into the others in every genome pymoo asks it to price.
"""
from __future__ import annotations

import numpy as np
from pymoo.core.repair import Repair

from jcw.latency.table import BoundTable


class SharedSubgraphDensity(Repair):
    def __init__(self, bound: BoundTable):
        super().__init__()
        subgraph = bound.subgraph
        tied = subgraph is not None and subgraph.possible and "threshold" not in bound.relaxed
        self.genes = [len(bound.space.groups) + i for i in bound.subgraph_sparse()] if tied else []

    def note(self) -> str:
        """One line for the search's log where genes are tied, else ''."""
        return (f"note: XNNPACK runs its NCHW subgraph sparse only as a whole: its {len(self.genes)} 1x1 convs share "
                "one density gene") if len(self.genes) > 1 else ""

    def _do(self, problem, X, **kwargs):
        X = np.rint(X).astype(np.int64)
        if len(self.genes) > 1:
            X[:, self.genes] = X[:, self.genes[:1]]
        return X
